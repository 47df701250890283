"""fusionrt.utils.progress_bar: tqdm on a terminal, plain lines elsewhere (issue 19.7)."""

import io

from fusionrt.utils import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_plain_lines_when_the_output_is_not_a_terminal():
    out = io.StringIO()
    bar = progress_bar(range(3), desc="training head", unit="epoch", file=out)
    assert isinstance(bar, LineProgress)
    bar.min_interval_s = 0.0  # a line per step (default: at most one every 5 s, and the last)
    for _ in bar:
        bar.set_postfix(loss="0.5000")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [line.split(",")[0] for line in lines] == ["training head: 1/3 epoch", "training head: 2/3 epoch", "training head: 3/3 epoch"]
    assert lines[1].endswith("loss=0.5000") and lines[1].split(", ")[1].endswith(" s")


def test_line_progress_throttles_but_always_shows_the_last_step():
    out = io.StringIO()
    bar = progress_bar(total=100, desc="encoding", unit="example", file=out)
    for _ in range(100):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["encoding: 1/100 example", "encoding: 100/100 example"]


def test_a_terminal_gets_tqdm_and_disabled_shows_nothing():
    from tqdm import tqdm

    bar = progress_bar(total=2, desc="benchmark", file=_Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    out = io.StringIO()
    quiet = progress_bar(range(2), total=2, desc="benchmark", enabled=False, file=out)
    assert list(quiet) == [0, 1]
    quiet.update()
    quiet.close()
    assert out.getvalue() == ""
