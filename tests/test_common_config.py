"""The shared configuration layer (fleetpush_common.config, .windows, .broker_settings):
one syntax for durations, sizes and windows on both sides, errors that name the key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ClassVar

import msgspec
import pytest
from msgspec import Meta, field

from fleetpush_common.broker_settings import BrokerSettings
from fleetpush_common.config import DURATION, SIZE, TIME, ConfigError, decode, parse_size
from fleetpush_common.windows import Window, parse_window
from orchestrator.security.auth import Principal, load_tokens_file


class Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    renamed: ClassVar[dict[str, str]] = {"wait_s": "wait"}

    wait_s: Annotated[float, DURATION, Meta(ge=1.0, le=3600.0)] = field(default=5.0, name="wait")
    size: Annotated[int, SIZE, Meta(ge=1, le=1 << 30)] = 1024
    at: Annotated[int, TIME] | None = None
    windows: tuple[Window, ...] = ()
    where: Path | None = None


class Doc(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    inner: Inner = field(default_factory=Inner)


def test_durations_sizes_times_windows_and_paths_in_one_decode(tmp_path: Path) -> None:
    doc = decode(Doc, {"inner": {"wait": "2m", "size": "64KiB", "at": "2026-12-01T00:00:00Z",
                                 "windows": ["Mon-Fri 02:00-04:00"], "where": "x"}},
                 "t.toml", tmp_path)  # fmt: skip
    i = doc.inner
    assert (i.wait_s, i.size, i.where) == (120.0, 65536, tmp_path / "x")
    assert i.at == int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    assert i.windows == (Window(120, 240, (0, 1, 2, 3, 4)),)
    assert decode(Doc, {"inner": {"wait": 30}}, "t.toml").inner.wait_s == 30.0  # seconds
    assert decode(Doc, {"inner": {"wait_s": 30}}, "t.toml").inner.wait_s == 30.0  # old key


@pytest.mark.parametrize(
    ("inner", "message"),
    [
        ({"wait": "1 fortnight"}, "t.toml: [inner] wait: expected a duration like"),
        ({"wait": "2h"}, "t.toml: [inner] wait: must be a duration 1s..1h"),
        ({"wait_s": 7200}, "t.toml: [inner] wait_s: must be a duration 1s..1h"),
        ({"wait": "1m", "wait_s": 60}, "[inner] wait_s: give wait only"),
        ({"size": "2GiB"}, "[inner] size: must be 1..1073741824 bytes, or a size like '64KiB'"),
        ({"size": "lots"}, "[inner] size: expected a size like"),
        ({"at": "2026-12-01T00:00:00"}, "[inner] at: needs a time zone"),
        ({"windows": ["25:00-26:00"]}, "[inner] windows[0]: window '25:00-26:00': invalid"),
        ({"windows": ["xyz 01:00-02:00"]}, "[inner] windows[0]: window 'xyz 01:00-02:00': days"),
        ({"typo": 1}, "t.toml: [inner] typo: unknown setting"),
        ({"where": ""}, "[inner] where: expected a path"),
    ],
)
def test_errors_name_file_table_and_key(inner: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode(Doc, {"inner": inner}, "t.toml", Path("/etc"))
    assert message in str(e.value)


def test_json_bodies_get_dotted_names() -> None:
    with pytest.raises(ConfigError, match=r"^inner\.typo: unknown field$"):
        decode(Doc, {"inner": {"typo": 1}}, "")
    with pytest.raises(ConfigError, match=r"^inner: expected an object, got a list$"):
        decode(Doc, {"inner": []}, "")


def test_one_window_syntax_for_both_sides() -> None:
    assert str(parse_window("22:00-02:00")) == "22:00-02:00"  # the device's form
    assert parse_window("mon,tue 01:00-05:00").days == (0, 1)  # the rollouts' form
    assert parse_window("Sat-Sun 00:00-24:00").days == (5, 6)
    night = parse_window("fri 22:00-02:00")  # belongs to the day it starts on
    friday_23 = datetime(2026, 12, 4, 23, 0, tzinfo=UTC).timestamp()
    assert night.contains(friday_23)
    assert night.contains(friday_23 + 2 * 3600)  # Saturday 01:00
    assert not night.contains(friday_23 + 86400)  # Saturday 23:00
    assert night.next_start(friday_23) == friday_23 - 3600 + 7 * 86400


def test_sizes() -> None:
    assert [parse_size(v) for v in ("65536", "64KiB", "1MB/s", "1.5k", 7)] == [
        65536, 65536, 10**6, 1500, 7]  # fmt: skip


def test_broker_settings_one_struct_for_both_sides(tmp_path: Path) -> None:
    b = BrokerSettings(url="mqtts://broker.example:8884", username="u")
    assert (b.host, b.port, b.tls) == ("broker.example", 8884, True)
    assert BrokerSettings(url="mqtt://h").port == 1883
    assert BrokerSettings(url="mqtts://h").port == 8883
    assert "secret" not in repr(BrokerSettings(url="mqtt://h", password="secret"))
    for kw, word in [({"url": "http://h"}, "url"),
                     ({"url": "mqtt://h", "ca_file": tmp_path}, "use mqtts://"),
                     ({"url": "mqtts://h", "cert_file": tmp_path}, "key_file"),
                     ({"url": "mqtt://h", "topic_prefix": "a/#"}, "topic_prefix")]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            BrokerSettings(**kw)  # type: ignore[arg-type]
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    read = BrokerSettings(url="mqtt://h", password_file=tmp_path / "pw").with_password_file()
    assert read.password == "s3cret"


def test_broker_protocol_is_5_or_311() -> None:
    assert BrokerSettings(url="mqtt://h").protocol_level == 5
    old = decode(BrokerSettings, {"url": "mqtt://h", "protocol": "3.1.1"}, "t.toml")
    assert old.protocol_level == 4
    for bad in ("3.1", "4", 5):
        with pytest.raises(ConfigError, match=r"t\.toml: protocol"):
            decode(BrokerSettings, {"url": "mqtt://h", "protocol": bad}, "t.toml")


def test_tokens_file_through_the_same_layer(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    sha = "AB" * 32
    path.write_text(f'[[token]]\nname = "ci"\nrole = "operator"\nsha256 = "{sha}"\n')
    assert load_tokens_file(path) == {sha.lower(): Principal("ci", "operator")}
    path.write_text(f'[[token]]\nname = "ci"\nrole = "root"\nsha256 = "{sha}"\n')
    with pytest.raises(ConfigError, match=r"tokens\.toml: \[token\[0\]\] role: 'root': one of"):
        load_tokens_file(path)
    path.write_text(f'[[token]]\nname = "ci"\nrole = "admin"\nsha = "{sha}"\n')
    with pytest.raises(ConfigError, match=r"\[token\[0\]\] sha: unknown setting"):
        load_tokens_file(path)
