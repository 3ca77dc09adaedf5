"""The package imports without its extension, and the command line behaves."""
import subprocess
import sys

from dense3d.cli import main


def test_import_without_extension_falls_back_with_one_warning():
    code = (
        "import sys, warnings; sys.modules['dense3d._C'] = None\n"  # makes `from dense3d import _C` fail
        "import dense3d, dense3d.ops as ops, torch\n"
        "assert not ops.ext_available(), 'extension should be missing'\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = ops.resolve_backend('auto', 'anything', torch.zeros(1))\n"
        "    b = ops.resolve_backend('auto', 'anything', torch.zeros(1))\n"
        "assert a == b == 'torch', (a, b)\n"
        "assert len(w) == 1 and 'pure-torch' in str(w[0].message), [str(x.message) for x in w]\n"
        "print(ops.backend_info())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"DENSE3D_NO_EXTENSION": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr
    assert "pure-torch references" in r.stdout


def test_extension_is_built_here():
    import dense3d.ops as ops

    assert ops.ext_available(), ops.backend_info()


def test_cli_unbuilt_commands_exit_nonzero(capsys):
    assert main(["vis"]) == 2
    assert "not built yet" in capsys.readouterr().err


def test_cli_demo_runs(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "summary.json").exists()
