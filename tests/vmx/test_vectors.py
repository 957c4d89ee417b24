"""Exception vectors against SDM Vol. 3 Table 6-1."""

from __future__ import annotations

import pytest

from smartvm_core.vmx import (
    EXCEPTION_CLASS,
    EXCEPTION_NAMES,
    HAS_ERROR_CODE,
    ExceptionClass,
    Vector,
)

SDM_TABLE_6_1 = {
    "DE": 0,
    "DB": 1,
    "NMI": 2,
    "BP": 3,
    "OF": 4,
    "BR": 5,
    "UD": 6,
    "NM": 7,
    "DF": 8,
    "TS": 10,
    "NP": 11,
    "SS": 12,
    "GP": 13,
    "PF": 14,
    "MF": 16,
    "AC": 17,
    "MC": 18,
    "XM": 19,
    "VE": 20,
    "CP": 21,
}


def test_vector_numbers() -> None:
    assert {v.name: v.value for v in Vector} == SDM_TABLE_6_1


@pytest.mark.parametrize("reserved", [9, 15, 22, 31])
def test_reserved_vectors_have_no_member(reserved: int) -> None:
    with pytest.raises(ValueError):
        Vector(reserved)


def test_error_code_set() -> None:
    assert {int(v) for v in HAS_ERROR_CODE} == {8, 10, 11, 12, 13, 14, 17, 21}


def test_classification() -> None:
    assert set(EXCEPTION_CLASS) == set(Vector) == set(EXCEPTION_NAMES)
    assert EXCEPTION_CLASS[Vector.DF] is ExceptionClass.ABORT
    assert EXCEPTION_CLASS[Vector.MC] is ExceptionClass.ABORT
    assert EXCEPTION_CLASS[Vector.BP] is ExceptionClass.TRAP
    assert EXCEPTION_CLASS[Vector.OF] is ExceptionClass.TRAP
    assert EXCEPTION_CLASS[Vector.DB] is ExceptionClass.FAULT_OR_TRAP
    assert EXCEPTION_CLASS[Vector.NMI] is ExceptionClass.INTERRUPT
    assert EXCEPTION_CLASS[Vector.PF] is ExceptionClass.FAULT
    assert Vector.PF.mnemonic == "#PF"
    assert Vector.NMI.mnemonic == "NMI"
