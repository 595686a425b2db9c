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
if command -v nft >/dev/null; then
  nft -f - <<'NFT'
table inet crossfleet_jobs {
  chain output {
    type filter hook output priority 0; policy accept;
    meta skuid "crossfleet-job" ip daddr 169.254.169.254 reject
    meta skuid "crossfleet-job" ip6 daddr fd00:ec2::254 reject
  }
}
NFT
elif command -v iptables >/dev/null; then
  iptables -w -I OUTPUT -m owner --uid-owner crossfleet-job -d 169.254.169.254 -j REJECT
  if command -v ip6tables >/dev/null; then
    ip6tables -w -I OUTPUT -m owner --uid-owner crossfleet-job -d fd00:ec2::254 -j REJECT
  fi
else
  echo "crossfleet: neither nft nor iptables on this AMI; refusing to run jobs without IMDS isolation" >&2
  exit 1
fi
# No network installs: the asset carries the agent's dependencies in /opt/crossfleet/vendor (pinned, tested).
test -d /opt/crossfleet/vendor/boto3
install -m 0644 /opt/crossfleet/worker/crossfleet-worker.service /etc/systemd/system/crossfleet-worker.service
chown -R crossfleet:crossfleet /opt/crossfleet
chmod 0640 /etc/crossfleet/worker.json && chgrp crossfleet /etc/crossfleet/worker.json
systemctl daemon-reload
systemctl enable --now crossfleet-worker.service
