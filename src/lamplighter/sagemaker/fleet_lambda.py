"""AWS Lambda entry point of the scheduled fleet check (``lamplighter.sagemaker.fleet_lambda.handler``).

Deployed by ``deploy/sam/template.yaml`` on a daily EventBridge schedule. It runs
:func:`lamplighter.sagemaker.fleet_check.check_fleet` over every domain of the region (or
``LAMPLIGHTER_FLEETCHECK_DOMAINS``), logs the whole report as one JSON line, and publishes the summary to
``LAMPLIGHTER_FLEETCHECK_SNS_TOPIC`` when one is set. Settings come through the one settings declaration
(group ``fleetcheck``, plus ``LAMPLIGHTER_SAGEMAKER_ENDPOINT_URL``, ``LAMPLIGHTER_HEARTBEAT_INTERVAL``
for agents that do not record their own, ``LAMPLIGHTER_VERIFY_TLS``); the event is not read: nobody who
can send one chooses what is checked.

It never raises for an expected failure (Lambda would retry, and publish twice): it returns ``status``
``ok`` (no problem found), ``problems`` (some found and reported), or ``error`` (the check or the
publish failed), with the counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from lamplighter.errors import ConfigError, LamplighterError
from lamplighter.redaction import guard_handlers
from lamplighter.sagemaker.client import call, sagemaker_client
from lamplighter.sagemaker.fleet_check import FleetReport, check_fleet
from lamplighter.settings import Settings, load_settings

__all__ = ["aws_client", "handler", "publish_summary", "run_fleet_check"]

logger = logging.getLogger(__name__)


def aws_client(service: str, *, region: str | None) -> Any:
    """A boto3 client for ``logs`` or ``sns`` (``AWS_ENDPOINT_URL_<SERVICE>`` reaches a VPC endpoint)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError("the fleet check needs boto3: pip install 'lamplighter[sagemaker]'") from None
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=30
    )
    session: Any = boto3.session.Session()  # the service is a variable: the stubs' overloads do not apply
    return session.client(service, region_name=region, config=config)


async def run_fleet_check(settings: Settings, *, now: datetime) -> FleetReport:
    """The check as the settings describe it."""
    return await check_fleet(
        client=sagemaker_client(region=settings.region, endpoint_url=settings.sagemaker_endpoint_url),
        now=now,
        domains=settings.fleetcheck_domains,
        logs_client=aws_client("logs", region=settings.region),
        log_group=settings.fleetcheck_log_group,
        notebook_log_group=settings.fleetcheck_notebook_instance_log_group,
        heartbeat_interval=settings.heartbeat_interval,
        login_as=settings.fleetcheck_login_as,
        region=settings.region,
        verify_tls=settings.verify_tls,
    )


async def publish_summary(report: FleetReport, topic_arn: str, *, region: str | None) -> str:
    """Publish the report's summary to SNS; returns the message id."""
    answer = await call(
        aws_client("sns", region=region),
        "Publish",
        TopicArn=topic_arn,
        Subject=report.subject(),
        Message=report.summary(),
    )
    return str(answer.get("MessageId") or "")


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function: check the fleet, log the report, publish the summary."""
    logging.getLogger("lamplighter").setLevel(logging.INFO)
    guard_handlers(logging.getLogger().handlers)
    try:
        settings = load_settings(env=os.environ)
        report = asyncio.run(run_fleet_check(settings, now=datetime.now(timezone.utc)))
        logger.info("%s", json.dumps(report.to_json(), sort_keys=True))
        result: dict[str, Any] = {
            "status": "problems" if report.problems() else "ok",
            "domains": len(report.domains),
            "apps": len(report.apps),
            "problems": len(report.problems()),
        }
        if settings.fleetcheck_sns_topic:
            topic = settings.fleetcheck_sns_topic
            result["message_id"] = asyncio.run(publish_summary(report, topic, region=settings.region))
    except LamplighterError as exc:
        result = {"status": "error", "error": str(exc)}
        logger.error("%s", json.dumps(result, sort_keys=True))
        return result
    logger.info("%s", json.dumps(result, sort_keys=True))
    return result
