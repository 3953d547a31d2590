from pathlib import Path

import pytest

from switchboard.core.config import Settings

TOML = """
[[providers]]
name = "bench"
kind = "openai-compatible"
base_url = "http://127.0.0.1:8081/v1"
api_key_env = "BENCH_API_KEY"        # optional

[[models]]
name = "mock-small"
provider = "bench"
context_window = 8192
input_usd_per_mtok = 0.15
cached_input_usd_per_mtok = 0.075
output_usd_per_mtok = 0.60
"""


def test_issue_toml_shape_loads_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(TOML + '\nport = 9000\n')
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(path))
    monkeypatch.setenv("SWITCHBOARD_PORT", "9100")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("BENCH_API_KEY", "secret-value")
    s = Settings()
    assert s.port == 9100  # environment beats the file
    assert s.catalog["mock-small"].provider == "bench"
    assert str(s.catalog["mock-small"].cached_input_usd_per_mtok) == "0.075"
    assert "gemma-3-270m" in s.catalog  # the local model stays on by default
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'd' / 'switchboard.db').resolve()}"
    assert s.providers[0].api_key() == "secret-value"
    assert "secret-value" not in repr(s)


def test_no_file_means_local_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    assert list(Settings().catalog) == ["gemma-3-270m"]


def test_bad_database_url_and_unknown_provider_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="database_url"):
        Settings(database_url="mysql://x")
    with pytest.raises(ValueError, match="unknown provider"):
        Settings(models=[{"name": "m", "provider": "nope", "context_window": 10, "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}])
