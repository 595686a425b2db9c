"""The job schema: valid jobs round-trip; every invalid one is rejected with a reason naming the field."""

from __future__ import annotations

import json

import pytest

from crossfleet_control.core.jobs import MAX_INLINE_PAYLOAD_BYTES, JobRejected, parse_job
from tests.jobfactory import job_message


def test_valid_job_round_trips_through_its_message():
    job = parse_job(job_message(id="abc-1", placement="gpu_only", preference="gpu", region="us-east-2"))
    again = parse_job(job.to_json())
    assert again == job
    assert job.allowed_pools() == ("gpu",)
    assert job.deadline_at() == job.submitted_at + 120


def test_model_size_round_trips_and_defaults_to_the_reference_model():
    job = parse_job(job_message(model_params_billion=70))
    assert job.model_params_billion == 70.0
    assert parse_job(job.to_json()) == job
    assert parse_job(job_message()).model_params_billion is None
    assert "model_params_billion" not in parse_job(job_message()).to_message()


def test_either_job_defaults_to_gpu_preference_and_may_run_anywhere():
    message = job_message()
    del message["preference"]
    job = parse_job(message)
    assert job.preference == "gpu" and job.allowed_pools() == ("cpu", "gpu")


def test_iso_timestamp_is_accepted():
    job = parse_job(job_message(submitted_at="2023-11-16T18:17:03Z"))
    assert job.submitted_at == pytest.approx(1700158623.0)


@pytest.mark.parametrize(("body", "reason"), [
    ("{not json", "body is not JSON"),
    ("[1, 2]", "body must be a JSON object, got list"),
    (job_message(schema_version=2), "schema_version=2: this crossfleet reads schema_version 1"),
    ({k: v for k, v in job_message().items() if k != "id"}, "missing required field 'id'"),
    ({k: v for k, v in job_message().items() if k != "submitted_at"}, "missing required field 'submitted_at'"),
    (job_message(placement="anywhere"), "placement='anywhere': one of cpu_only, gpu_only, either"),
    (job_message(placement="cpu_only", preference="gpu"), "preference='gpu': for placement cpu_only one of cpu"),
    (job_message(**{"class": "training"}), "class='training': one of inference, agent"),
    (job_message(deadline_seconds=0), "deadline_seconds=0: a number of seconds above 0"),
    (job_message(priority=11), "priority=11: a whole number from 0 (lowest) to 9"),
    (job_message(size={"input_tokens": -4}), "size.input_tokens=-4: a whole number"),
    (job_message(size={}), "size={}: an object with any of"),
    (job_message(placement="either", size={"cpu_seconds": 3}),
     "size: give input_tokens/output_tokens, or the cpu_seconds/gpu_seconds of every pool placement either allows"),
    (job_message(region="eu-west-1"), "region='eu-west-1': a US region pin"),
    (job_message(colour="blue"), "unknown field(s) colour"),
    (job_message(model_params_billion=0), "model_params_billion=0: the model's size in billions of parameters"),
    (job_message(model_params_billion="70B"), "model_params_billion='70B': the model's size in billions"),
    (job_message(model_params_billion=True), "model_params_billion=True: the model's size in billions"),
    (job_message(payload={"s3_uri": "https://bucket/key"}), "payload.s3_uri='https://bucket/key': an s3://"),
])
def test_invalid_jobs_are_rejected_with_a_reason(body, reason):
    with pytest.raises(JobRejected) as caught:
        parse_job(body if isinstance(body, str) else json.dumps(body))
    assert caught.value.reason.startswith(reason)


def test_oversized_inline_payload_points_to_s3():
    big = job_message(payload={"blob": "x" * (MAX_INLINE_PAYLOAD_BYTES + 1)})
    with pytest.raises(JobRejected) as caught:
        parse_job(big)
    assert "upload it to S3 and send {\"s3_uri\": \"s3://bucket/key\"} instead" in caught.value.reason
    assert caught.value.job_id == big["id"]


def test_placement_rules():
    assert parse_job(job_message(placement="cpu_only", preference="cpu")).may_run_on("gpu") is False
    assert parse_job(job_message(placement="gpu_only")).may_run_on("cpu") is False


@pytest.mark.parametrize(("body", "reason"), [
    (json.dumps(job_message(submitted_at=float("inf"))), "submitted_at=inf: epoch seconds"),
    (job_message(submitted_at="9999-12-31T00:00:00Z"), "submitted_at='9999-12-31T00:00:00Z': epoch seconds"),
    (job_message(submitted_at=253_402_214_400), "submitted_at=253402214400: epoch seconds"),
    (job_message(id="trailing-newline\n"), "id='trailing-newline\\n': 1-128 characters"),
    (job_message(schema_version=True), "schema_version=True: this crossfleet reads schema_version 1"),
    (job_message(schema_version=1.0), "schema_version=1.0: this crossfleet reads schema_version 1"),
    (job_message(attempt=10**30), f"attempt={10**30}: a whole number from 0 to 1000000"),
    (job_message(moves=-1), "moves=-1: a whole number from 0 to 1000000"),
    ('{"schema_version": 1, "id": "nan", "class": "eval", "placement": "either", "size": {"input_tokens": 1}, '
     '"deadline_seconds": 60, "submitted_at": 1700000000, "payload": {"x": NaN}}', "payload: JSON numbers only"),
])
def test_values_python_reads_but_a_job_cannot_hold_are_rejected(body, reason):
    """Issue 17: each of these was accepted (and Infinity was then re-serialised as the non-JSON `Infinity`)."""
    with pytest.raises(JobRejected) as caught:
        parse_job(body if isinstance(body, str) else json.dumps(body))
    assert caught.value.reason.startswith(reason)


def test_the_fingerprint_ignores_delivery_counters_and_nothing_else():
    job = parse_job(job_message(id="fp"))
    assert parse_job(job.moved().to_json()).fingerprint() == job.fingerprint()
    assert parse_job(job_message(id="fp", attempt=3)).fingerprint() == job.fingerprint()
    assert parse_job(job_message(id="fp", priority=1)).fingerprint() != job.fingerprint()
