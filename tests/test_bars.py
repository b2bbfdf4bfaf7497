"""Progress bars: live on a terminal, rare in a log file."""

import io

from playworld.bars import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_a_line_a_minute_and_a_terminal_a_live_bar():
    log, tty = io.StringIO(), _Terminal()
    for stream in (log, tty):
        bar = progress_bar(total=3, file=stream)
        assert bar.mininterval == (0.1 if stream is tty else 60.0)
        bar.close()
    assert progress_bar(total=1, file=log, mininterval=5.0).mininterval == 5.0  # an explicit choice wins
    quiet = io.StringIO()
    for _ in progress_bar(range(10_000), file=quiet, miniters=1):
        pass
    assert quiet.getvalue().count("\r") <= 3  # first draw and the close, not one line per item
