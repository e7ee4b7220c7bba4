"""Tracked text files point at nothing outside the repository.

Checked over ``git ls-files`` (this file included, so it spells the
forbidden strings only in pieces): no mention of the paper-setup notes that
lived outside the repository (their facts are in ``docs/paper_setup.md``),
no absolute path of a development machine, and every relative link of a
markdown document resolves to a file of the repository.
"""
import os.path as osp
import re
import shutil
import subprocess

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def slash_join(*parts: str) -> str:
    """``'/'.join(parts)``: an example path written in pieces."""
    return '/'.join(parts)


#: absolute paths of a machine under the usual roots (a development
#: folder, root's and users' homes, macOS users, mounts, pytest's temporary
#: folders) and Windows user folders. Not preceded by a name character, so
#: a relative path or a URL segment with the same name does not match.
ABSOLUTE_PATH = re.compile(
    r'(?<![\w.~-])/(?:work|root|home|Users|mnt|scratch|tmp/pytest-of-\w+)/'
    r'|\b[A-Za-z]:\\(?:Users|home)\\')
#: the outside document's file name
OUTSIDE_DOCUMENT = re.compile(re.escape('PAPER_' + 'SETUP.md'))
MARKDOWN_LINK = re.compile(r'\]\(([^)\s]+)\)')

pytestmark = pytest.mark.skipif(
    shutil.which('git') is None
    or not osp.exists(osp.join(REPO, '.git')),  # a worktree: .git is a file
    reason='needs git and a git checkout of the repository')


def tracked_text_files() -> dict:
    """``{path relative to the repository: text}`` of tracked text files."""
    names = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split('\0')
    texts = {}
    for name in filter(None, names):
        path = osp.join(REPO, name)
        if not osp.isfile(path):
            continue
        with open(path, 'rb') as f:
            data = f.read()
        if b'\0' in data:  # binary (images, ...)
            continue
        texts[name] = data.decode('utf-8', errors='replace')
    return texts


def _hits(pattern: re.Pattern) -> list:
    return [f'{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}'
            for name, text in tracked_text_files().items()
            for m in pattern.finditer(text)]


def test_patterns_catch_what_they_are_for():
    for bad in ('see ' + slash_join('', 'work', 'shared', 'x.md'),
                repr(slash_join('', 'root', '.cache', 'x')),
                slash_join('', 'home', 'me', 'data'),
                'in ' + slash_join('', 'tmp', 'pytest-of-dev', 'pytest-3',
                                   'x'),
                'C:\\' + 'Users\\me\\x'):
        assert ABSOLUTE_PATH.search(bad), bad
    for fine in ('../shared/data/camvid_voc', 'data/camvid_voc',
                 'https://download.openmmlab.com/mmsegmentation/v0.5/',
                 'work_dirs/demo', slash_join('~', 'work', ''),
                 slash_join('a', 'home', 'b')):
        assert not ABSOLUTE_PATH.search(fine), fine
    assert OUTSIDE_DOCUMENT.search('(PAPER_' + 'SETUP.md, "Which layers")')


def test_tracked_files_have_no_absolute_machine_path():
    assert _hits(ABSOLUTE_PATH) == []


def test_tracked_files_do_not_cite_documents_outside_the_repo():
    assert _hits(OUTSIDE_DOCUMENT) == []


def test_markdown_links_resolve_inside_the_repo():
    missing = []
    for name, text in tracked_text_files().items():
        if not name.endswith('.md'):
            continue
        for target in MARKDOWN_LINK.findall(text):
            if re.match(r'^(https?:|mailto:|#)', target):
                continue
            path = osp.normpath(
                osp.join(REPO, osp.dirname(name), target.split('#')[0]))
            inside = path.startswith(REPO + osp.sep)
            if not inside or not osp.exists(path):
                missing.append(f'{name}: ({target})')
    assert missing == []
