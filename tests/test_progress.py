"""Progress bars of the loops outside Lightning: on a terminal by default, forced on or off on request."""

from __future__ import annotations

from simlm.progress import progress_bar


def test_progress_bar_modes(capsys):
    items = range(3)
    assert progress_bar(items, "x", enabled=False) is items
    assert list(progress_bar(items, "quiet", enabled=None)) == [0, 1, 2]  # pytest's stderr is no terminal
    assert "quiet" not in capsys.readouterr().err
    assert list(progress_bar(items, "shown", enabled=True)) == [0, 1, 2]
    assert "shown" in capsys.readouterr().err
