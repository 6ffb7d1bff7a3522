"""The dataset config schema and the checks around it, without a server or a database."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from iceprod_server import dataset_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "conf" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.json"))


def small(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"version": 3, "tasks": list(tasks) or [{"name": "only"}]}


def example(name: str) -> dict[str, Any]:
    """One of the bundled configs in IceProd 2's format (conf/examples)."""
    loaded: dict[str, Any] = json.loads((EXAMPLES_DIR / name).read_text())
    return loaded


def test_schema_is_valid_json_schema() -> None:
    schema = dataset_config.schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_what_iceprod2_writes_into_its_configs_is_accepted() -> None:
    """IceProd 2's own configs carry the dataset number, a parent id, categories, null for
    empty sections, requirements with only some keys, and modules that name a
    ``running_class`` with an empty ``src``."""
    config = example("simulation.json")
    config.update({"dataset": 30004, "parent_id": 41, "categories": [], "difplus": None})
    config["steering"].update({"batchsys": None, "system": {}, "resources": []})
    config["tasks"][0]["requirements"] = {"disk": 20}
    config["tasks"][2]["requirements"] = {"disk": 20, "gpu": 1, "memory": 3.5}
    module = config["tasks"][1]["trays"][0]["modules"][0]
    module.update({"src": "", "running_class": "icecube.simprod.modules.MuonPropagator",
                   "args": {"seed": "$steering(seed)", "skipoptions": ["compress"],
                            "MakeFIFO": False, "pgam": [2.65, 2.6]},
                   "env_shell": "/cvmfs/icecube.opensciencegrid.org/py2-v2/icetray-env x"})
    module["data"] = [{"compression": False, "local": "corsika.i3.gz", "movement": "output",
                       "remote": "", "type": "job_temp"}]
    assert dataset_config.validate(config) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_accepted(path: Path) -> None:
    assert dataset_config.validate(json.loads(path.read_text())) == []


def test_example_dependencies_and_requirements() -> None:
    config = example("simulation.json")
    # generate <- propagate <- photons <- detector, which also names generate by index
    assert dataset_config.task_dependencies(config) == [[], [0], [1], [2, 0]]
    photons = dataset_config.task_requirements(config["tasks"][2])
    assert photons == {"cpu": 1, "gpu": 1, "memory": 3.5, "disk": 2.0, "time": 1.0, "os": None}
    assert dataset_config.task_dependencies(example("filtering.json")) == [[], [0], [1]]


def test_missing_tasks_is_refused() -> None:
    problems = dataset_config.validate({"version": 3, "steering": {}})
    assert problems and problems[0].startswith("$:") and "'tasks'" in problems[0], problems
    assert any(p.startswith("$.tasks:") for p in dataset_config.validate({"tasks": []}))


def test_not_an_object_is_refused() -> None:
    assert dataset_config.validate([]) and dataset_config.validate(None)


def test_bad_movement_is_refused_with_its_path() -> None:
    config = example("simulation.json")
    config["tasks"][2]["trays"][0]["modules"][0]["data"] = [
        {"local": "photons.i3.zst", "remote": "", "type": "job_temp", "movement": "sideways"}]
    problems = dataset_config.validate(config)
    assert len(problems) == 1, problems
    assert problems[0].startswith("$.tasks[2].trays[0].modules[0].data[0].movement:"), problems
    assert "sideways" in problems[0]


def test_bad_data_type_and_requirements_are_refused() -> None:
    config = small({"name": "a", "data": [{"type": "forever"}],
                    "requirements": {"cpu": -1, "memory": [1], "os": 7}})
    paths = {p.split(":")[0] for p in dataset_config.validate(config)}
    assert paths == {"$.tasks[0].data[0].type", "$.tasks[0].requirements.cpu",
                     "$.tasks[0].requirements.memory", "$.tasks[0].requirements.os"}


def test_task_needs_a_name() -> None:
    problems = dataset_config.validate(small({"depends": []}, {"name": ""}))
    assert any(p.startswith("$.tasks[0]:") and "'name'" in p for p in problems), problems
    assert any(p.startswith("$.tasks[1].name:") for p in problems), problems


def test_duplicate_task_names_are_refused() -> None:
    config = example("simulation.json")
    config["tasks"][2]["name"] = "generate"
    problems = dataset_config.validate(config)
    assert any(p.startswith("$.tasks[2].name:") and "duplicate" in p for p in problems), \
        problems


@pytest.mark.parametrize("dep", ["b", 1, "1"])
def test_dependency_on_a_later_task_is_refused(dep: Any) -> None:
    problems = dataset_config.validate(small({"name": "a", "depends": [dep]}, {"name": "b"}))
    assert len(problems) == 1 and problems[0].startswith("$.tasks[0].depends[0]:"), problems
    assert "later task" in problems[0]


def test_dependency_on_itself_and_unknown_tasks_are_refused() -> None:
    problems = dataset_config.validate(small({"name": "a"},
                                             {"name": "b", "depends": ["b", "nope", 7]}))
    assert [p.split(":")[0] for p in problems] == [
        "$.tasks[1].depends[0]", "$.tasks[1].depends[1]", "$.tasks[1].depends[2]"], problems
    assert "itself" in problems[0] and "unknown" in problems[1] and "unknown" in problems[2]


def test_dependencies_by_name_index_and_other_dataset() -> None:
    config = small({"name": "a"}, {"name": "b", "depends": [0]},
                   {"name": "c", "depends": ["a", "b", "1a2b3c.gen", 1]})
    assert dataset_config.validate(config) == []
    deps = dataset_config.task_dependencies(config)
    assert deps[:2] == [[], [0]]
    assert deps[2] == [0, 1, dataset_config.ExternalDependency("1a2b3c", "gen")]


def test_version_must_be_2_or_3() -> None:
    assert dataset_config.validate({**small(), "version": 2}) == []
    assert dataset_config.validate({**small(), "version": 4})[0].startswith("$.version:")


def test_extra_keys_and_empty_sections_are_allowed() -> None:
    config = copy.deepcopy(example("simulation.json"))
    config["something_new"] = {"x": 1}
    config["tasks"][0]["another"] = None
    config["steering"]["batchsys"] = None
    config["difplus"] = None
    assert dataset_config.validate(config) == []


def test_many_problems_are_capped() -> None:
    config = small(*({"name": "t", "depends": ["nope"]} for _ in range(100)))
    problems = dataset_config.validate(config)
    assert len(problems) == dataset_config.MAX_PROBLEMS + 1
    assert problems[-1].startswith("... and ")


def test_requirements_defaults_and_expressions() -> None:
    assert dataset_config.task_requirements({"name": "a"}) == dataset_config.REQUIREMENT_DEFAULTS
    steering = {"cpus": 4, "mem": "$eval(1.5*2)", "showers": "5000"}
    req = dataset_config.task_requirements({"name": "a", "requirements": {
        "cpu": "$steering(cpus)", "gpu": 2, "memory": "$eval($steering(mem)//2)", "disk": "3",
        "time": None, "os": ["RHEL_7_x86_64", "RHEL_8_x86_64"]}}, steering)
    assert req == {"cpu": 4, "gpu": 2, "memory": 1.0, "disk": 3.0, "time": 1.0,
                   "os": ["RHEL_7_x86_64", "RHEL_8_x86_64"]}
    assert isinstance(req["disk"], float) and isinstance(req["gpu"], int)
    assert dataset_config.task_requirements({"requirements": {"os": "RHEL_7"}})["os"] == "RHEL_7"
    assert dataset_config.task_requirements({"requirements": {"os": ["RHEL_7"]}})["os"] == \
        "RHEL_7"
    assert dataset_config.task_requirements({"requirements": {"os": []}})["os"] is None


@pytest.mark.parametrize(("value", "named"), [
    ("$(job)", "$(job)"),
    ("$eval($(job) % 4 + 1)", "$(job)"),
    ("$steering(nope)", "'nope'"),
    ("$args(cpus)", "$args"),
    ("$eval(__import__('os'))", "not plain arithmetic"),
    ("lots", "'lots'"),
])
def test_requirement_expression_that_cannot_be_evaluated_is_a_problem(value: str,
                                                                      named: str) -> None:
    config = small({"name": "t", "requirements": {"memory": "2", "cpu": value}})
    problems = dataset_config.validate(config)
    assert len(problems) == 1, problems
    assert problems[0].startswith("$.tasks[0].requirements.cpu"), problems
    assert repr(value) in problems[0] and named in problems[0], problems


@pytest.mark.parametrize(("key", "value"), [
    ("cpu", 10**30), ("memory", "1e300"), ("time", "$eval(10**9)"), ("cpu", "9" * 5000),
])
def test_requirement_beyond_any_machine_is_a_problem(key: str, value: object) -> None:
    problems = dataset_config.validate(small({"name": "t", "requirements": {key: value}}))
    assert len(problems) == 1 and problems[0].startswith(f"$.tasks[0].requirements.{key}")
    assert len(problems[0]) < 500, "a problem quotes a long expression only in part"


def test_config_as_json_text() -> None:
    text = (EXAMPLES_DIR / "filtering.json").read_text()
    assert dataset_config.validate(dataset_config.parse(text)) == []
    with pytest.raises(ValueError):
        dataset_config.parse("{not json")
    assert dataset_config.parse({"tasks": []}) == {"tasks": []}
