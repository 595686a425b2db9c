"""The `monitoring` section: who is paged, and when."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crossfleet.config import parsing as p
from crossfleet.config.errors import ConfigError


@dataclass(frozen=True)
class MonitoringConfig:
    alarm_emails: tuple[str, ...]
    oldest_job_alarm_seconds: int  # a queued job older than this pages
    shortage_alarm_minutes: int  # failed launches for this many minutes in a row page


def parse_monitoring(raw: Any) -> MonitoringConfig:
    path = "monitoring"
    s = p.section(raw, path, ("alarm_emails", "oldest_job_alarm_seconds", "shortage_alarm_minutes"))
    emails = p.string_list(s, path, "alarm_emails", (), allow_empty=True)
    for i, email in enumerate(emails):
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise ConfigError(p.join(p.join(path, "alarm_emails"), i), email, "an email address")
    return MonitoringConfig(
        alarm_emails=emails,
        oldest_job_alarm_seconds=p.integer(s, path, "oldest_job_alarm_seconds", 900, minimum=60, maximum=86400),
        shortage_alarm_minutes=p.integer(s, path, "shortage_alarm_minutes", 15, minimum=1, maximum=1440))
