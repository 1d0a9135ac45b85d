"""Command-line arguments as ``mt.cli`` hands them to Hydra."""

from __future__ import annotations

import pytest

from mt.cli import expand_home


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("data.path=~/corpus", "data.path=/home/u/corpus"),
        ("hydra.sweep.dir=~", "hydra.sweep.dir=/home/u"),
        ("data.path=~/a,~/b", "data.path=/home/u/a,/home/u/b"),  # a sweep's values, each
        ("data.path=/data/a,~/b", "data.path=/data/a,/home/u/b"),
        ("hydra.run.dir=~/runs/${now:%H-%M}", "hydra.run.dir=/home/u/runs/${now:%H-%M}"),
        ("data.path=a~b", "data.path=a~b"),  # not at the start: a plain character
        ("runs=[~/a,~/b]", "runs=[/home/u/a,/home/u/b]"),  # a list's elements
        ("data.path=x\\,~/y", "data.path=x\\,~/y"),  # one value, its comma escaped: no ~ at its start
        ("data.path=~/x\\,y,~/z", "data.path=/home/u/x\\,y,/home/u/z"),
        ('data.path="~/quoted"', 'data.path="~/quoted"'),  # quoted: the user's literal string
        ("~data.path", "~data.path"),  # Hydra's deletion of a key
        ("--cfg", "--cfg"),
        ("-m", "-m"),
    ],
)
def test_a_leading_tilde_of_an_override_value_is_the_home_directory(monkeypatch, argument, expected):
    monkeypatch.setenv("HOME", "/home/u")
    assert expand_home(argument) == expected
