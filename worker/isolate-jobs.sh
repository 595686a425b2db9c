#!/bin/bash
# Command jobs run as crossfleet-job (runners.CommandRunner.run_as, through setpriv), which may not reach the
# instance metadata service: a job gets no instance-role credentials, only its input file from the agent.
# Run at every boot by crossfleet-job-isolation.service (the worker unit requires it). Fail closed: without a
# packet filter this exits non-zero and the worker is not started.
set -euo pipefail
if command -v nft >/dev/null; then
  # Idempotent: a second run replaces the table instead of adding a second copy of its rules.
  nft delete table inet crossfleet_jobs 2>/dev/null || true
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
  iptables -w -C OUTPUT -m owner --uid-owner crossfleet-job -d 169.254.169.254 -j REJECT 2>/dev/null \
    || iptables -w -I OUTPUT -m owner --uid-owner crossfleet-job -d 169.254.169.254 -j REJECT
  if command -v ip6tables >/dev/null; then
    ip6tables -w -C OUTPUT -m owner --uid-owner crossfleet-job -d fd00:ec2::254 -j REJECT 2>/dev/null \
      || ip6tables -w -I OUTPUT -m owner --uid-owner crossfleet-job -d fd00:ec2::254 -j REJECT
  fi
else
  echo "crossfleet: neither nft nor iptables on this AMI; refusing to run jobs without IMDS isolation" >&2
  exit 1
fi
