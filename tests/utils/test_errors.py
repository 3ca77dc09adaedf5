"""dense3d/errors.py: how a command prints bad input."""
import io
import subprocess
import sys

from dense3d.errors import ConfigError, exit_status


class _Writes(io.StringIO):
    """A stderr that records each write call, as a pipe shared by torchrun's ranks sees them."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def write(self, s):
        self.calls.append(s)
        return super().write(s)


def test_the_error_line_goes_out_in_one_write(monkeypatch):
    """Two torchrun ranks printing the same ConfigError joined into one line in CI
    ("...got auto (DDP ...)dense3d train: ConfigError: ...") because print() writes the text and
    its newline apart. A pipe keeps a single write under 4 KiB whole, so the line is one write."""
    err = _Writes()
    monkeypatch.setattr("sys.stderr", err)

    def main():
        raise ConfigError("configs/train.yaml", "trainer.strategy", "ddp_find_unused_parameters_true", got="auto")

    assert exit_status(main, "dense3d train") == 2
    assert err.calls == ["dense3d train: ConfigError: configs/train.yaml: field 'trainer.strategy': "
                         "expected ddp_find_unused_parameters_true, got auto\n"]


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """``tools/caption_facts.py ... | head`` printed a BrokenPipeError traceback (session 40): the
    command stops with status 141 and nothing on stderr, also not from the flush at exit."""
    # writes 10 MB, far past a pipe's 64 KiB buffer, so the write after the reader left fails
    code = ("import sys; from dense3d.errors import exit_status\n"
            "def main():\n    for _ in range(100_000): print('x' * 100)\n"
            "sys.exit(exit_status(main, 'tools/caption_facts.py'))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"x" * 100 + b"\n"
    proc.stdout.close()  # as head does after its lines
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_a_broken_pipe_elsewhere_is_not_swallowed():
    """Only stdout's reader leaving is quiet: a BrokenPipeError from another pipe (a loader worker,
    a DDP store) while stdout is fine keeps its traceback and a failing status."""
    code = ("import os, sys; from dense3d.errors import exit_status\n"
            "def main():\n    r, w = os.pipe(); os.close(r); os.write(w, b'x')\n"
            "sys.exit(exit_status(main, 'dense3d train'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "BrokenPipeError" in proc.stderr.splitlines()[-1]


def test_train_tools_help_into_a_closed_pipe_ends_quietly():
    """``python tools/train.py --help | head -1``: hydra prints the help outside the task function,
    and a reader that left gave a BrokenPipeError traceback (status 1); now 141 and no stderr."""
    from pathlib import Path

    tool = Path(__file__).parents[2] / "tools" / "train.py"
    proc = subprocess.Popen([sys.executable, str(tool), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the tool has imported hydra, let alone printed
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""
