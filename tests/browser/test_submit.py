"""/submit: a dataset from an example, and a broken config refused line by line."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.browser.helpers import (
    EXAMPLES,
    Shots,
    Site,
    dataset_config,
    login,
    python_task,
    wait_for,
)

DATASET_URL = re.compile(r"/dataset/([^/?#]+)$")


def test_submit_the_example_and_land_on_its_page(page: Any, site: Site, shot: Shots) -> None:
    login(page, "alice", next_url="/submit")
    assert page.url.endswith("/submit"), page.url
    options: list[list[str]] = page.eval_on_selector_all(
        "#example option", "options => options.map(o => [o.value, o.textContent])")
    simple = [value for value, label in options if value and "simple" in (value + label).lower()]
    assert simple, f"#example should offer conf/examples/simple.json; it offers {options}"
    page.select_option("#example", simple[0])
    text = wait_for(page, "the example in #config", lambda: page.input_value("#config"),
                    lambda t: '"tasks"' in t)
    assert [t["name"] for t in json.loads(text)["tasks"]] == ["hello"], text[:500]
    page.fill("#njobs", "3")
    page.fill("#description", "three greetings from the browser")
    shot(page, "filled")

    page.click("#submit-button")
    page.wait_for_url(DATASET_URL, timeout=15_000)
    shot(page, "dataset-page")
    found = DATASET_URL.search(page.url)
    assert found, page.url
    dataset_id = found.group(1)
    info = site.dataset(dataset_id)
    assert (info["owner"], info["njobs"], info["description"]) == (
        "alice", 3, "three greetings from the browser"), info
    assert "three greetings from the browser" in page.locator("main").inner_text()


def test_a_broken_config_shows_each_problem_and_stores_nothing(page: Any, site: Site,
                                                               shot: Shots) -> None:
    login(page, "alice", next_url="/submit")
    before = site.dataset_total()
    broken = dataset_config(python_task("a", "pass"), python_task("b", "pass"),
                            python_task("c", "pass"))
    broken["tasks"][0]["depends"] = ["c"]
    broken["tasks"][1]["requirements"]["cpu"] = -2
    broken["tasks"][2]["data"] = [{"remote": "file:///tmp/x", "local": "x",
                                   "type": "permanent", "movement": "sideways"}]
    text = json.dumps(broken, indent=2)
    page.fill("#config", text)
    page.fill("#njobs", "5")
    page.click("#submit-button")
    problems = page.locator("#problems li")
    problems.first.wait_for(state="visible")
    shot(page, "problems")
    lines = [li.strip() for li in problems.all_inner_texts()]
    assert len(lines) >= 3, f"expected a line per problem (3 at least), got {lines}"
    for line in lines:
        assert line.startswith("$."), f"each problem should start with its JSON path: {line!r}"
        assert line.count("$.") == 1, f"one problem per line, got {line!r}"
    joined = "\n".join(lines)
    assert "sideways" in joined, joined
    assert re.search(r"\$\.tasks\[0\]\.depends", joined), joined
    assert re.search(r"\$\.tasks\[1\]\.requirements", joined), joined
    assert page.url.endswith("/submit"), f"a refused config should stay on /submit: {page.url}"
    assert page.input_value("#config") == text, "the config should be kept for fixing"
    assert site.dataset_total() == before, "a refused config must not store a dataset"

    page.fill("#config", '{"version": 3, "tasks": [')
    page.click("#submit-button")
    wait_for(page, "a problem about the JSON", lambda: problems.all_inner_texts(),
             lambda got: bool(got) and all("sideways" not in t for t in got))
    shot(page, "not-json")
    assert site.dataset_total() == before, "text that is not JSON must not store a dataset"


def test_upload_a_config_file(page: Any, site: Site, shot: Shots) -> None:
    login(page, "bob", next_url="/submit")
    page.set_input_files("#config-file", str(EXAMPLES / "two_tasks.json"))
    text = wait_for(page, "the uploaded file in #config", lambda: page.input_value("#config"),
                    lambda t: '"tasks"' in t)
    shot(page, "uploaded")
    assert json.loads(text) == json.loads((EXAMPLES / "two_tasks.json").read_text())
