"""Where workers write job results: encrypted, TLS-only, private, with access logs and an expiry."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct


class ResultsBucket(Construct):
    bucket: s3.Bucket
    access_logs: s3.Bucket

    def __init__(self, scope: Construct, id_: str, *, retain_on_delete: bool, expire_days: int = 30) -> None:
        super().__init__(scope, id_)
        removal = RemovalPolicy.RETAIN if retain_on_delete else RemovalPolicy.DESTROY
        common = dict(encryption=s3.BucketEncryption.S3_MANAGED, enforce_ssl=True,
                      block_public_access=s3.BlockPublicAccess.BLOCK_ALL, removal_policy=removal,
                      object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED)
        # ACLs disabled: S3 delivers server access logs under a bucket policy for logging.s3.amazonaws.com, limited
        # to the source bucket and account (S3 User Guide, "Permissions for log delivery"). Versioned so a deleted
        # or overwritten log keeps its earlier version for a while.
        self.access_logs = s3.Bucket(
            self, "AccessLogs", encryption=s3.BucketEncryption.S3_MANAGED, enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, removal_policy=removal,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED, versioned=True,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90),
                                              noncurrent_version_expiration=Duration.days(30))])
        # Versioned: a result overwritten by a compromised worker keeps its earlier version (for a week).
        self.bucket = s3.Bucket(self, "Bucket", **common, server_access_logs_bucket=self.access_logs,
                                server_access_logs_prefix="results/", versioned=True,
                                lifecycle_rules=[s3.LifecycleRule(
                                    expiration=Duration.days(expire_days),
                                    noncurrent_version_expiration=Duration.days(7))])
