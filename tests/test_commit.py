"""``docker commit``'s pure parts: ``--change`` lines and the new image config."""

from __future__ import annotations

import pytest

from sdcd.core.commit import apply_changes, image_config
from sdcd.core.errors import InvalidArgument

BASE = {"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "WorkingDir": "/srv", "Labels": {"x": "1"}}


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ('CMD ["cat", "/f"]', "Cmd", ["cat", "/f"]),
        ("CMD echo hi", "Cmd", ["/bin/sh", "-c", "echo hi"]),
        ('ENTRYPOINT ["/init"]', "Entrypoint", ["/init"]),
        ('ENV A=2 B="two words"', "Env", ["PATH=/bin", "A=2", "B=two words"]),
        ("ENV C old form", "Env", ["PATH=/bin", "A=1", "C=old form"]),
        ("EXPOSE 80 53/udp", "ExposedPorts", {"80/tcp": {}, "53/udp": {}}),
        ("LABEL y=2", "Labels", {"x": "1", "y": "2"}),
        ("USER nobody", "User", "nobody"),
        ("WORKDIR sub", "WorkingDir", "/srv/sub"),
        ("WORKDIR /abs", "WorkingDir", "/abs"),
        ('VOLUME ["/a", "/b"]', "Volumes", {"/a": {}, "/b": {}}),
        ("VOLUME /c", "Volumes", {"/c": {}}),
        ("STOPSIGNAL SIGINT", "StopSignal", "SIGINT"),
        ("ONBUILD RUN true", "OnBuild", ["RUN true"]),
    ],
)
def test_each_change(change, field, expected):
    assert apply_changes(BASE, [change])[field] == expected
    assert BASE["Env"] == ["PATH=/bin", "A=1"]  # the input is not changed


def test_entrypoint_drops_cmd_and_lines_may_hold_several():
    config = apply_changes(BASE, ['ENTRYPOINT ["/init"]\nUSER 1000'])
    assert config["Cmd"] is None and config["User"] == "1000"


@pytest.mark.parametrize(
    "change",
    ["RUN true", "FROM x", "ADD a b", "ENV a", "EXPOSE http", "VOLUME [1]", "CMD", "ENV =x"],
)
def test_refused_changes(change):
    with pytest.raises(InvalidArgument):
        apply_changes(BASE, [change])


def test_image_config_appends_a_layer_and_a_history_entry():
    base = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:a"]},
        "history": [{"created": "t0", "created_by": "base"}],
        "config": {"Cmd": ["sh"]},
    }
    container = {"Cmd": ["cat"], "Env": ["A=1"], "HostConfig": {"x": 1}, "Image": "busybox"}
    out = image_config(base, container, "sha256:b", container_id="c1", created="t1",
                       author="me", comment="msg", created_by="sh -c x")  # fmt: skip
    assert out["rootfs"]["diff_ids"] == ["sha256:a", "sha256:b"]
    assert out["history"][-1] == {"created": "t1", "created_by": "sh -c x", "author": "me",
                                  "comment": "msg"}  # fmt: skip
    assert out["config"] == {"Cmd": ["cat"], "Env": ["A=1"], "Image": "busybox"}
    assert out["container"] == "c1" and base["rootfs"]["diff_ids"] == ["sha256:a"]
