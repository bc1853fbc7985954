"""``docker build``'s config-only steps and cache keys (pure)."""

from __future__ import annotations

import pytest

from sdcd.core import buildconfig, dockerfile
from sdcd.core.buildconfig import BuildArgs, BuildError, StageState


def state(**config) -> StageState:
    return StageState("sha256:" + "a" * 64, (), {"config": config, "history": []})


def step(s: StageState, line: str, args: BuildArgs | None = None) -> str:
    return buildconfig.apply(s, dockerfile.parse("FROM x\n" + line)[1], args or BuildArgs())


def test_env_expands_with_args_and_env_and_keeps_order():
    s = state(Env=["PATH=/bin"])
    args = BuildArgs(given={"V": "1.2"})
    step(s, "ARG V", args)
    step(s, 'ENV APP=/opt/app-$V GREETING="hello world"', args)
    step(s, "ENV FULL=${APP}/bin", args)
    assert s.config["Env"] == ["PATH=/bin", "APP=/opt/app-1.2", "GREETING=hello world",
                               "FULL=/opt/app-1.2/bin"]  # fmt: skip
    assert args.unused() == []


def test_arg_values_given_default_and_global():
    args = BuildArgs(given={"A": "given", "UNUSED": "x"}, meta={"G": "global"})
    s = state()
    step(s, "ARG A=default B=dflt G", args)
    assert s.args == {"A": "given", "B": "dflt", "G": "global"}
    assert args.unused() == ["UNUSED"]
    # an ENV of the same name hides the ARG from RUN's environment
    step(s, "ENV B=env", args)
    assert s.run_args() == ["A=given", "G=global"]


def test_workdir_user_cmd_entrypoint():
    s = state(Cmd=["sh"], Entrypoint=None)
    step(s, "WORKDIR /srv")
    step(s, "WORKDIR app/../sub")
    assert s.config["WorkingDir"] == "/srv/sub"
    step(s, "USER 1000:1000")
    assert s.config["User"] == "1000:1000"
    step(s, 'ENTRYPOINT ["/init"]')
    assert s.config["Cmd"] is None  # the base image's CMD goes with a new ENTRYPOINT
    step(s, "CMD run --fast")
    assert s.config["Cmd"] == ["/bin/sh", "-c", "run --fast"]
    step(s, 'ENTRYPOINT ["/init2"]')
    assert s.config["Cmd"] == ["/bin/sh", "-c", "run --fast"]  # set in this stage: kept


def test_shell_changes_shell_form():
    s = state()
    step(s, 'SHELL ["/bin/ash", "-eo", "pipefail", "-c"]')
    step(s, "CMD echo hi")
    assert s.config["Cmd"] == ["/bin/ash", "-eo", "pipefail", "-c", "echo hi"]
    with pytest.raises((BuildError, dockerfile.DockerfileError)):
        step(s, "SHELL /bin/bash")


def test_expose_volume_label_stopsignal():
    s = state()
    step(s, "EXPOSE 80 53/udp 8000-8002")
    assert s.config["ExposedPorts"] == {
        "80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}}  # fmt: skip
    step(s, 'VOLUME ["/a", "/b"]')
    step(s, "VOLUME /c")
    assert s.config["Volumes"] == {"/a": {}, "/b": {}, "/c": {}}
    step(s, 'LABEL "com.example.k"="v 1" other=2')
    assert s.config["Labels"] == {"com.example.k": "v 1", "other": "2"}
    step(s, "STOPSIGNAL SIGUSR1")
    assert s.config["StopSignal"] == "SIGUSR1"
    for bad in ("EXPOSE http", "EXPOSE 1-65535", "STOPSIGNAL ???"):
        with pytest.raises((BuildError, dockerfile.DockerfileError)):
            step(s, bad)


def test_onbuild_recorded_and_checked():
    s = state()
    step(s, "ONBUILD RUN echo hi")
    assert s.config["OnBuild"] == ["RUN echo hi"]
    with pytest.raises((BuildError, dockerfile.DockerfileError)):
        step(s, "ONBUILD ONBUILD RUN x")


def test_cache_key_depends_on_parent_and_run_config():
    one = buildconfig.cache_key("sha256:p", {"Cmd": ["a"], "Env": ["X=1"]})
    assert one == buildconfig.cache_key("sha256:p", {"Env": ["X=1"], "Cmd": ["a"]})
    assert one != buildconfig.cache_key("sha256:q", {"Cmd": ["a"], "Env": ["X=1"]})
    assert one != buildconfig.cache_key("sha256:p", {"Cmd": ["a"], "Env": ["X=2"]})


def test_new_doc_appends_history_and_layers():
    s = state(Cmd=["sh"])
    s.doc["rootfs"] = {"type": "layers", "diff_ids": ["sha256:1"]}
    empty = buildconfig.new_doc(s, {"Cmd": ["x"]}, "t1", "/bin/sh -c #(nop)  ENV A=1", None)
    assert empty["history"][-1]["empty_layer"] is True
    assert empty["rootfs"]["diff_ids"] == ["sha256:1"]
    full = buildconfig.new_doc(s, {"Cmd": ["x"]}, "t2", "/bin/sh -c make", "sha256:2")
    assert full["rootfs"]["diff_ids"] == ["sha256:1", "sha256:2"]
    assert "empty_layer" not in full["history"][-1]
    assert s.doc["rootfs"]["diff_ids"] == ["sha256:1"]  # the stage's document is not changed
