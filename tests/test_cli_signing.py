"""Tests for `clarity-resilience verify --signature` and the progress display."""

from __future__ import annotations

import io
import pathlib

import pytest
import signing
from signing import new_key, new_pki, sign_with_certificate, sign_with_key
from trees import make_tree

from clarity_resilience._cli import main
from clarity_resilience._progress import Progress

FILES = {"weights.bin": b"\x00\x01" * 5000, "config.json": b'{"layers": 2}'}


@pytest.fixture(autouse=True)
def _model_signing() -> None:
    signing.require_model_signing()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_tree(tmp_path / "model", FILES)


@pytest.fixture
def signed(model_dir: pathlib.Path, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Sign model_dir with a fresh key: return (signature, public key)."""
    key = new_key(tmp_path / "keys")
    signature = model_dir / "model.sig"
    sign_with_key(model_dir, key, signature)
    return signature, key.public_pem


def verify(*args: str) -> int:
    return main(["verify", *args])


class TestVerifySignature:
    def test_signed_directory_verifies(
        self,
        model_dir: pathlib.Path,
        signed: tuple[pathlib.Path, pathlib.Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A signed directory and the signer's key: exit 0, one OK line, no progress piped."""
        signature, key = signed
        assert verify(str(model_dir), "--signature", str(signature), "--public-key", str(key)) == 0
        out, err = capsys.readouterr()
        assert out == f"{model_dir}: OK (2 files verified)\n"
        assert err == ""

    def test_tampered_file_fails_with_one_line(
        self,
        model_dir: pathlib.Path,
        signed: tuple[pathlib.Path, pathlib.Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """One changed byte: exit 1 and the file named once."""
        signature, key = signed
        (model_dir / "config.json").write_bytes(b'{"layers": 3}')
        assert verify(str(model_dir), "--signature", str(signature), "--public-key", str(key)) == 1
        assert capsys.readouterr().err == "clarity-resilience: config.json: checksum mismatch\n"

    def test_another_key_is_refused(
        self,
        model_dir: pathlib.Path,
        signed: tuple[pathlib.Path, pathlib.Path],
        tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A signature checked against someone else's key fails in one line."""
        signature, _ = signed
        other = new_key(tmp_path / "other")
        status = verify(
            str(model_dir), "--signature", str(signature), "--public-key", str(other.public_pem)
        )
        assert status == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("clarity-resilience: ")

    def test_certificate_chain_verifies(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A certificate-signed directory verifies against its root CA."""
        pki = new_pki(tmp_path / "pki")
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        args = ["--signature", str(signature), "--certificate-chain", str(pki.root_pem)]
        assert verify(str(model_dir), *args) == 0
        other = new_pki(tmp_path / "other", name="Other")
        args[-1] = str(other.root_pem)
        assert verify(str(model_dir), *args) == 1

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(["--signature", "s"], id="signature-without-key"),
            pytest.param(
                ["--signature", "s", "--public-key", "k", "--certificate-chain", "c"],
                id="both-keys",
            ),
            pytest.param(["--manifest", "m", "--public-key", "k"], id="key-without-signature"),
            pytest.param(["--manifest", "m", "--signature", "s"], id="manifest-and-signature"),
            pytest.param([], id="neither"),
        ],
    )
    def test_wrong_combinations_are_usage_errors(
        self, model_dir: pathlib.Path, args: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Trust options that do not make one trust root exit 2."""
        assert verify(str(model_dir), *args) == 2
        assert "usage:" in capsys.readouterr().err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class TestProgress:
    def test_line_shows_files_bytes_rate_and_time_left(self) -> None:
        """The status line counts files and MiB, the rate, and what is left."""
        now = [0.0]
        progress = Progress(
            FakeTerminal(),
            files=4,
            total_bytes=4 * 1024 * 1024,
            enabled=True,
            clock=lambda: now[0],
        )
        now[0] = 1.0
        progress(1024 * 1024)
        assert progress.line(now[0]) == "1/4 files, 1.0/4.0 MiB, 1.0 MiB/s, 3 s left"

    def test_draws_on_a_terminal_and_clears_at_the_end(
        self,
        model_dir: pathlib.Path,
        signed: tuple[pathlib.Path, pathlib.Path],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """On a terminal, verify draws the status line on stderr and erases it after."""
        terminal = FakeTerminal()
        monkeypatch.setattr("sys.stderr", terminal)
        signature, key = signed
        assert verify(str(model_dir), "--signature", str(signature), "--public-key", str(key)) == 0
        drawn = terminal.getvalue()
        assert "2/2 files" in drawn
        assert drawn.endswith("\r\x1b[K")
        assert capsys.readouterr().out.endswith("OK (2 files verified)\n")

    def test_quiet_draws_nothing_on_a_terminal(
        self,
        model_dir: pathlib.Path,
        signed: tuple[pathlib.Path, pathlib.Path],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """--quiet keeps a terminal's stderr empty."""
        terminal = FakeTerminal()
        monkeypatch.setattr("sys.stderr", terminal)
        signature, key = signed
        args = ["--signature", str(signature), "--public-key", str(key), "--quiet"]
        assert verify(str(model_dir), *args) == 0
        assert terminal.getvalue() == ""

    def test_manifest_create_shows_progress_on_a_terminal(
        self, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Creating a manifest (it hashes) shows progress too."""
        terminal = FakeTerminal()
        monkeypatch.setattr("sys.stderr", terminal)
        assert main(["manifest", "create", str(model_dir), "-o", str(model_dir / "M")]) == 0
        assert "2/0 files" not in terminal.getvalue()
        assert "files" in terminal.getvalue()
