"""Query parameters out of shape are a 400 naming the parameter, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import Gateway


@pytest.mark.parametrize("month", [
    "2026-99999999999999999999",  # int() takes it, datetime overflows: was a 500
    "9999-12",  # the month after is out of datetime's range: was a 500
    "٢٠٢٦-٠١",  # Arabic-Indic digits pass int()
    "2026-13", "2026-1", " 2026-01", "2026-01-01", "-2026-01", "0000-01", "2026_01", "2026-\x00",
])
def test_statement_month_out_of_shape_is_400(gateway: Gateway, month: str) -> None:
    r = httpx.get(gateway.api + "/billing/statement", params={"month": month},
                  headers={"Authorization": f"Bearer {gateway.key}"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "month" and error["type"] == "invalid_request_error"


def test_statement_months_in_range_answer(gateway: Gateway) -> None:
    for month in ("1970-01", "2026-12", "9998-12"):
        r = httpx.get(gateway.api + "/billing/statement", params={"month": month},
                      headers={"Authorization": f"Bearer {gateway.key}"})
        assert r.status_code == 200 and r.json()["month"] == month, r.text


@pytest.mark.parametrize(("path", "param", "value"), [
    ("/usage", "limit", "١٠"), ("/usage", "limit", "1_0"), ("/usage", "limit", " 10"), ("/usage", "limit", "0"),
    ("/usage", "before", "9" * 40), ("/usage", "before", "-1"), ("/usage/summary", "days", "3661"),
    ("/usage/summary", "by", "week"), ("/usage/export", "format", "xml"),
])
def test_usage_parameters_out_of_shape_are_400(gateway: Gateway, path: str, param: str, value: str) -> None:
    r = httpx.get(gateway.api + path, params={param: value}, headers={"Authorization": f"Bearer {gateway.key}"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
