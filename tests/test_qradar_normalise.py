"""QRadar offense -> canonical fields."""
from __future__ import annotations

import pytest

from parsers.qradar import magnitude_to_score, normalise_offense

# the apis.md 3.4 example offense
OFFENSE = {"id": 1201, "description": "Multiple Login Failures for svc_backup\n", "magnitude": 6,
           "severity": 7, "start_time": 1747213800000, "last_updated_time": 1747214100000,
           "offense_source": "203.0.113.7", "status": "OPEN", "source_address_ids": [44],
           "categories": ["User Login Failure"]}


def test_example_offense():
    f = normalise_offense(OFFENSE)
    assert (f["kind"], f["vendor"], f["product"]) == ("incident", "IBM", "QRadar")
    assert f["id"] == "1201" and isinstance(f["id"], str)
    assert f["extra"]["qradar_offense_id"] == "1201"
    assert f["dedup_key"] == "qradar:1201"
    assert f["name"] == "Multiple Login Failures for svc_backup"
    assert (f["risk_score"], f["severity"]) == (60, "high")
    assert f["status"] == "open"
    assert f["occurred"] == "2025-05-14T09:10:00.000Z"
    assert f["occurred_unix"] == 1747213800.0
    assert f["extra"]["updated"] == "2025-05-14T09:15:00.000Z"
    assert f["src_ip"] == "203.0.113.7"
    assert f["extra"]["categories"] == ["User Login Failure"]
    assert f["extra"]["qradar_severity"] == 7 and f["extra"]["magnitude"] == 6


@pytest.mark.parametrize("mag,score,band", [
    (1, 10, "informational"), (2, 20, "low"), (3, 30, "low"), (4, 40, "medium"), (5, 50, "medium"),
    (6, 60, "high"), (7, 70, "high"), (8, 80, "critical"), (9, 90, "critical"), (10, 100, "critical"),
])
def test_magnitude_mapping(mag, score, band):
    f = normalise_offense(dict(OFFENSE, magnitude=mag))
    assert (f["risk_score"], f["severity"]) == (score, band)


def test_magnitude_edge_values():
    assert magnitude_to_score(None) is None
    assert magnitude_to_score(0) == 0
    assert magnitude_to_score(12) == 100
    assert magnitude_to_score("7") == 70


def test_no_magnitude_uses_severity_then_informational():
    o = dict(OFFENSE)
    del o["magnitude"]
    f = normalise_offense(o)
    assert (f["risk_score"], f["severity"]) == (70, "high") and f["extra"]["notes"]
    del o["severity"]
    f = normalise_offense(o)
    assert f["risk_score"] is None and f["severity"] == "informational"


@pytest.mark.parametrize("status", ["OPEN", "HIDDEN", "CLOSED"])
def test_status(status):
    assert normalise_offense(dict(OFFENSE, status=status))["status"] == status.lower()


def test_closed_offense_times():
    f = normalise_offense(dict(OFFENSE, status="CLOSED", close_time=1747217700123, closing_reason_id=2))
    assert f["extra"]["close_time"] == "2025-05-14T10:15:00.123Z"
    assert f["extra"]["closing_reason_id"] == 2


def test_id_string_ordering_hazard():
    # ids are strings in the output; callers must not order cursors by them as strings
    a, b = normalise_offense(dict(OFFENSE, id=999)), normalise_offense(dict(OFFENSE, id=1000))
    assert a["id"] == "999" and b["id"] == "1000"
    assert a["id"] > b["id"]                         # why the cursor keeps the int


def test_resolved_addresses_and_rules():
    o = dict(OFFENSE, offense_type=0,
             source_addresses=[{"id": 44, "source_ip": "203.0.113.7"}, {"id": 45, "source_ip": "203.0.113.8"}],
             local_destination_addresses=[{"id": 9, "local_destination_ip": "10.0.0.5"}],
             rules=[{"id": 100, "type": "CRE_RULE"}], rule_names=["Login Failures Followed by Success"])
    f = normalise_offense(o)
    assert f["src_ip"] == "203.0.113.7" and f["dst_ip"] == "10.0.0.5"
    assert f["extra"]["source_addresses"] == ["203.0.113.7", "203.0.113.8"]
    assert f["extra"]["rule_names"] == ["Login Failures Followed by Success"]
    assert f["extra"]["rule_ids"] == [100]


def test_rule_names_from_rules_objects():
    f = normalise_offense(dict(OFFENSE, rules=[{"id": 1, "type": "CRE_RULE", "name": "Brute force"}]))
    assert f["extra"]["rule_names"] == ["Brute force"]


@pytest.mark.parametrize("otype,source,field", [
    (3, "svc_backup", "user"), (7, "web-01", "host"), (1, "198.51.100.2", "dst_ip"), (0, "198.51.100.3", "src_ip"),
])
def test_offense_source_by_type(otype, source, field):
    f = normalise_offense(dict(OFFENSE, offense_type=otype, offense_source=source))
    assert f[field] == source
    if field != "src_ip":
        assert f["src_ip"] is None
    assert f["extra"]["offense_source"] == source


def test_untyped_non_ip_source_is_not_an_ip():
    f = normalise_offense(dict(OFFENSE, offense_source="svc_backup"))
    assert f["src_ip"] is None and f["extra"]["offense_source"] == "svc_backup"


def test_multiline_description_and_console_url():
    f = normalise_offense(dict(OFFENSE, description="Line one\n preceded by line two\n"),
                          console_url="https://qradar.example/")
    assert f["name"] == "Line one" and f["description"] == "Line one\n preceded by line two"
    assert f["url"] == ("https://qradar.example/console/qradar/jsp/QRadar.jsp"
                        "?appName=Sem&pageId=OffenseSummary&summaryId=1201")


def test_minimal_offense_does_not_fail():
    f = normalise_offense({"id": 5})
    assert f["id"] == "5" and f["occurred"] is None and f["severity"] == "informational"
    assert f["name"] == "QRadar offense 5"
