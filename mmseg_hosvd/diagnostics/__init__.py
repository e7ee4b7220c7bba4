"""Run-level diagnostics (memory-leak check)."""
from .leaks import (RssProbe, RssSample, TrendVerdict, build_leak_config,
                    current_rss_mib, judge_trend, peak_growth_line,
                    peak_rss_mib, relative_growth, sample_line,
                    theil_sen_slope)

__all__ = [
    'RssProbe', 'RssSample', 'TrendVerdict', 'build_leak_config',
    'current_rss_mib', 'judge_trend', 'peak_growth_line', 'peak_rss_mib',
    'relative_growth', 'sample_line', 'theil_sen_slope'
]
