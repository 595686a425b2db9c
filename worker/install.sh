#!/bin/bash
# Installs the crossfleet worker from the unpacked asset in /opt/crossfleet (user data unpacks it first),
# then starts it under systemd. Nothing is downloaded here. Settings are in /etc/crossfleet/worker.json.
set -euo pipefail
id crossfleet >/dev/null 2>&1 || useradd --system --home /opt/crossfleet --shell /sbin/nologin crossfleet
# Command jobs run as crossfleet-job (runners.CommandRunner.run_as, through setpriv), which may not reach the
# instance metadata service: a job gets no instance-role credentials, only its input file from the agent.
# Fail closed: without a packet filter the worker is not started.
id crossfleet-job >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
  --shell /sbin/nologin crossfleet-job
# The packet filter lives in nft/iptables memory, which a reboot or a stop and start (a warm pool's instances are
# stopped after their first boot) empties: a unit applies it at every boot, and the worker requires that unit.
# What root runs at boot is a root-owned copy: /opt/crossfleet belongs to the unprivileged agent.
install -m 0755 -o root -g root /opt/crossfleet/worker/isolate-jobs.sh /usr/local/sbin/crossfleet-isolate-jobs
install -m 0644 /opt/crossfleet/worker/crossfleet-job-isolation.service \
  /etc/systemd/system/crossfleet-job-isolation.service
systemctl daemon-reload
systemctl enable --now crossfleet-job-isolation.service
# No network installs: the asset carries the agent's dependencies in /opt/crossfleet/vendor (pinned, tested).
test -d /opt/crossfleet/vendor/boto3
install -m 0644 /opt/crossfleet/worker/crossfleet-worker.service /etc/systemd/system/crossfleet-worker.service
chown -R crossfleet:crossfleet /opt/crossfleet
chmod 0640 /etc/crossfleet/worker.json && chgrp crossfleet /etc/crossfleet/worker.json
systemctl daemon-reload
if [ "${CROSSFLEET_WARM_LANE:-0}" = "1" ]; then
  # A warm-lane instance: neither now (it may be being prepared for the warm pool) nor at boot does the worker
  # start by itself; crossfleet-warm-lane.service starts it at each boot whose target state is InService.
  install -d -m 0755 -o root -g root /usr/local/lib/crossfleet
  install -m 0644 -o root -g root /opt/crossfleet/worker/crossfleet_worker/warm_lane.py \
    /usr/local/lib/crossfleet/warm_lane.py
  install -m 0644 /opt/crossfleet/worker/crossfleet-warm-lane.service /etc/systemd/system/crossfleet-warm-lane.service
  systemctl daemon-reload
  exit 0
fi
systemctl enable --now crossfleet-worker.service
