"""``argparse`` types shared by the benchmark command lines."""
import argparse


def eps_value(text: str) -> float:
    """An explained-variance threshold in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'eps must be a number in (0, 1], got {text!r}') from None
    if not 0 < value <= 1:  # also rejects NaN
        raise argparse.ArgumentTypeError(
            f'eps must be in (0, 1], got {text!r}')
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f'expected an integer >= 1, got {text!r}')
    return value
