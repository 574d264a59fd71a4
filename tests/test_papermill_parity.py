"""lamplighter's parameter handling against papermill's own code, value by value (no server needed)."""

from __future__ import annotations

import base64
import importlib.util
import math
from typing import Any

import pytest
import yaml
from papermill import translators as pm_translators
from papermill.cli import _resolve_type
from papermill.iorw import NoDatesSafeLoader

from lamplighter.errors import ConfigError
from lamplighter.remote.parameters import (
    TRANSLATORS,
    find_translator,
    merge_parameters,
    resolve_type,
    translate_parameters,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("black") is not None,
    reason="papermill reformats Python parameters with black when it is installed; lamplighter never does",
)

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    7,
    2147483647,
    2147483648,
    -2147483649,
    10**30,
    0.5,
    -0.0,
    1e-300,
    1.5e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "plain",
    "-x",
    "-inf",
    'say "hi"',
    "it's",
    "back\\slash",
    "tab\tnew\nline",
    "ünïcödé ☃",
    "$HOME `cmd` $(x)",
    "a b; c",
    [],
    [1, "two", None, 3.5, True],
    [[1, 2], ["a"]],
    {},
    {"k": "v", "n": 1, "f": float("nan"), "l": [1, {"deep": None}]},
    {1: "int key", "q'uote": 'd"q'},
    (1, 2),
    b"bytes",
]

LANGUAGES = sorted(TRANSLATORS)


def pm_or_error(translator: type[Any], method: str, *args: Any) -> str:
    try:
        return str(getattr(translator, method)(*args))
    except NotImplementedError:
        return "NotImplementedError"


def ours_or_error(kernel: str, params: dict[str, Any]) -> str:
    try:
        return translate_parameters(kernel, None, params)
    except ConfigError:
        return "NotImplementedError"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_value_translates_as_papermill_does(language: str) -> None:
    theirs = pm_translators.papermill_translators.find_translator(language, None)
    for value in VALUES:
        params = {"x": value, "_under": value}
        expected = pm_or_error(theirs, "codify", params)
        assert ours_or_error(language, params) == expected, (language, value)


def test_the_registry_is_papermills() -> None:
    assert set(TRANSLATORS) == set(pm_translators.papermill_translators._translators)
    for key, translator in TRANSLATORS.items():
        theirs = pm_translators.papermill_translators._translators[key]
        assert translator.__name__ == theirs.__name__


@pytest.mark.parametrize(
    ("kernel", "language", "expected"),
    [
        ("python3", "python", "PythonTranslator"),
        ("ir", "R", "RTranslator"),
        ("bash", "bash", "BashTranslator"),
        ("pysparkkernel", "python", "PythonTranslator"),
        ("sparkkernel", "python", "ScalaTranslator"),  # the kernel name wins over the language
        ("julia-1.10", "julia", "JuliaTranslator"),
        ("imatlab", "matlab", "MatlabTranslator"),
        (".net-fsharp", "F#", "FSharpTranslator"),
    ],
)
def test_the_translator_is_found_as_papermill_finds_it(kernel: str, language: str, expected: str) -> None:
    assert find_translator(kernel, language).__name__ == expected
    assert pm_translators.papermill_translators.find_translator(kernel, language).__name__ == expected


def test_an_unknown_language_is_one_line_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"no translator for kernel 'haskell' or language 'haskell'"):
        translate_parameters("haskell", "haskell", {"x": 1})


@pytest.mark.parametrize(
    "text",
    ["True", "False", "None", "1", "-1", "1_000", "0x10", "1.5", "-2e3", "nan", "NaN", "inf", "-inf",
     "Infinity", "-x", "", " 7 ", "1e400", "2024-01-02", "true", "null"],
)  # fmt: skip
def test_p_values_are_typed_as_papermill_types_them(text: str) -> None:
    ours, theirs = resolve_type(text), _resolve_type(text)
    assert type(ours) is type(theirs)
    assert ours == theirs or (isinstance(ours, float) and math.isnan(ours) and math.isnan(theirs))


def test_flags_merge_in_papermills_order() -> None:
    b64 = base64.b64encode(b"a: from-b64\nb: from-b64\nwhen: 2024-01-02\n").decode()
    merged = merge_parameters(
        base64_yaml=[b64],
        files=[("one.yaml", "b: file1\nc: file1\n"), ("two.yaml", "c: file2\nd: file2\n")],
        yaml_texts=["d: y1\ne: y1", "e: y2\nf: y2"],
        typed=[("f", "1"), ("g", "nan"), ("h", "2")],
        raw=[("h", "raw"), ("i", "1")],
    )
    assert merged["a"] == "from-b64"
    assert merged["b"] == "file1"
    assert merged["c"] == "file2"
    assert merged["d"] == "y1"
    assert merged["e"] == "y2"
    assert merged["f"] == 1  # -p after -y
    assert math.isnan(merged["g"])
    assert merged["h"] == "raw"  # -r after -p, whatever the order on the command line
    assert merged["i"] == "1"
    assert merged["when"] == "2024-01-02"  # papermill's loader keeps dates as typed
    assert yaml.load("when: 2024-01-02", Loader=NoDatesSafeLoader) == {"when": "2024-01-02"}
    assert list(merged) == ["a", "b", "when", "c", "d", "e", "f", "g", "h", "i"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"yaml_texts": ["[1, 2]"]}, "expected a mapping"),
        ({"yaml_texts": ["a: [1"]}, "not valid YAML"),
        ({"base64_yaml": ["%%%"]}, "not base64"),
        ({"files": [("p.yaml", "- 1")]}, "p.yaml: expected a mapping"),
    ],
)
def test_bad_parameter_sources_are_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        merge_parameters(**kwargs)
    assert "\n" not in str(caught.value)
