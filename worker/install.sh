#!/bin/bash
# Installs the crossfleet worker from the unpacked asset in /opt/crossfleet (user data unpacks it first),
# then starts it under systemd. Settings are in /etc/crossfleet/worker.json.
set -euo pipefail
id crossfleet >/dev/null 2>&1 || useradd --system --home /opt/crossfleet --shell /sbin/nologin crossfleet
python3 -m venv /opt/crossfleet/venv
/opt/crossfleet/venv/bin/pip install --quiet --disable-pip-version-check "boto3>=1.34,<2"
install -m 0644 /opt/crossfleet/worker/crossfleet-worker.service /etc/systemd/system/crossfleet-worker.service
chown -R crossfleet:crossfleet /opt/crossfleet
chmod 0640 /etc/crossfleet/worker.json && chgrp crossfleet /etc/crossfleet/worker.json
systemctl daemon-reload
systemctl enable --now crossfleet-worker.service
