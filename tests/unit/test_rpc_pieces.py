"""The dispatcher's building blocks without a server: ``__jsonclass__`` encoding and the
binding of params to a method's annotated parameters."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from iceprod_server.errors import InvalidParams
from iceprod_server.rpc import jsonclass
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import REGISTRY, USER, Id, bind, rpc_method


@pytest.mark.parametrize("value", [
    datetime.datetime(2017, 3, 4, 5, 6, 7, 890),
    datetime.datetime(2017, 3, 4, 5, 6, 7, tzinfo=datetime.UTC),
    datetime.date(2017, 3, 4),
    b"\x00\x01binary\xff",
    {"nested": [b"x", datetime.date(2020, 1, 1)]},
])
def test_jsonclass_round_trip(value: Any) -> None:
    assert jsonclass.loads(jsonclass.dumps(value)) == value


def test_jsonrpclib_form_is_read() -> None:
    # jsonrpclib writes [name, [args]]
    text = '{"__jsonclass__": ["datetime", ["2017-03-04T05:06:07"]]}'
    assert jsonclass.loads(text) == datetime.datetime(2017, 3, 4, 5, 6, 7)


def test_other_objects_stay_objects() -> None:
    assert jsonclass.loads('{"__jsonclass__": ["datetime", "x"], "extra": 1}') == \
        {"__jsonclass__": ["datetime", "x"], "extra": 1}
    assert jsonclass.loads('{"__jsonclass__": ["Unknown", "x"]}') == \
        {"__jsonclass__": ["Unknown", "x"]}


@pytest.mark.parametrize("text", ["[NaN]", "[Infinity]", '{"__jsonclass__": ["bytes", "*"]}'])
def test_not_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        jsonclass.loads(text)


async def _sample(ctx: Context, dataset_id: Id, njobs: int, ratio: float = 1.0,
                  names: list[str] | None = None, mode: Literal["a", "b"] = "a",
                  extra: dict[str, Any] | None = None) -> None:
    """A method to bind params to."""


@pytest.fixture
def sample() -> Iterator[Any]:
    rpc_method(USER, name="unit_sample")(_sample)
    yield REGISTRY["unit_sample"]
    REGISTRY.pop("unit_sample")


def test_bind_named_and_positional(sample: Any) -> None:
    assert bind(sample, {"dataset_id": "d1", "njobs": 3}) == {"dataset_id": "d1", "njobs": 3}
    assert bind(sample, ["d1", 3, 2]) == {"dataset_id": "d1", "njobs": 3, "ratio": 2.0}


def test_ids_are_strings(sample: Any) -> None:
    assert bind(sample, {"dataset_id": 42, "njobs": 1})["dataset_id"] == "42"


@pytest.mark.parametrize("params, word", [
    ({"njobs": 1}, "dataset_id"),                                  # missing
    ({"dataset_id": "d", "njobs": 1, "jobs": 2}, "jobs"),          # unknown
    ({"dataset_id": "d", "njobs": "1"}, "njobs"),                  # string for int
    ({"dataset_id": "d", "njobs": True}, "njobs"),                 # bool for int
    ({"dataset_id": "d", "njobs": 1.5}, "njobs"),                  # float for int
    ({"dataset_id": "", "njobs": 1}, "dataset_id"),                # empty id
    ({"dataset_id": ["d"], "njobs": 1}, "dataset_id"),
    ({"dataset_id": "d", "njobs": 1, "ratio": "x"}, "ratio"),
    ({"dataset_id": "d", "njobs": 1, "names": ["a", 2]}, "names"),
    ({"dataset_id": "d", "njobs": 1, "mode": "c"}, "mode"),
    ({"dataset_id": "d", "njobs": 1, "extra": []}, "extra"),
    (["d", 1, 1.0, None, "a", None, "too many"], "at most"),
])
def test_bad_params_are_invalid(sample: Any, params: Any, word: str) -> None:
    with pytest.raises(InvalidParams) as e:
        bind(sample, params)
    assert word in str(e.value) + str(e.value.data)
    assert e.value.data, "-32602 must say what was wrong"
