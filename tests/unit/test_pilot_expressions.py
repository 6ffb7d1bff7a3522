"""How the reference pilot fills in IceProd expressions in a module's command line."""

from __future__ import annotations

from iceprod_server.pilot.modules import module_command, parameters, substitute


def test_builtins_parameters_and_steering_form() -> None:
    values = {"job": 7, "dataset": 20001, "CORSIKA::showers": 100, "outroot": "file:///o",
              "workdir": "$(outroot)/sim-$(dataset)/job-$(job)"}
    assert substitute("$(job) of $(dataset)", values) == "7 of 20001"
    assert substitute("$steering(CORSIKA::showers)", values) == "100"
    # a parameter that uses expressions itself is filled in too
    assert substitute("$(workdir)/x.json", values) == "file:///o/sim-20001/job-7/x.json"


def test_unknown_and_other_expressions_are_left_as_written() -> None:
    text = "$(nope) $steering(nope) $eval($(job)*2) $sprintf('%d', 3)"
    assert substitute(text, {"job": 4}) == "$(nope) $steering(nope) $eval(4*2) $sprintf('%d', 3)"


def test_a_parameter_loop_ends() -> None:
    values = {"a": "$(b)", "b": "$(a)"}
    assert substitute("$(a)", values) in ("$(a)", "$(b)")


def test_task_parameters_override_steering() -> None:
    config = {"steering": {"parameters": {"x": 1, "y": 2}}}
    assert parameters(config, {"parameters": {"y": 3}}) == {"x": 1, "y": 3}
    assert parameters({"steering": None}, {}) == {}


def test_module_command_uses_parameters() -> None:
    module = {"src": "python3", "args": ["-c", "pass", "$steering(n)", "$(iter)"]}
    assert module_command(module, {"n": 25, "iter": 2}) == ["python3", "-c", "pass", "25", "2"]
