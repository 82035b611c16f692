#!/usr/bin/env python3
"""moto server with the two gaps that stop `terraform apply` of envs/local filled in:

- Application Auto Scaling's TagResource / UntagResource / ListTagsForResource (the AWS
  provider reads a scalable target's tags and would retry for minutes without them);
- a Cloud Map service created with DnsConfig.NamespaceId also carries it as its NamespaceId,
  as AWS does (moto leaves it empty, and the provider then sees a diff forever);
- an ECS service keeps its healthCheckGracePeriodSeconds and availabilityZoneRebalancing, an
  RDS instance its Performance Insights flag, a security-group rule that references a group
  its description (moto drops them, so a plan after apply would show changes).

    python3 terraform/emulator/moto_server.py [PORT]      # default 5000, on 127.0.0.1
"""
import json
import os
import sys

os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")

from moto.applicationautoscaling.responses import ApplicationAutoScalingResponse  # noqa: E402
from moto.ecs.responses import EC2ContainerServiceResponse  # noqa: E402
from moto.ec2.models.security_groups import SecurityGroupRule  # noqa: E402
from moto.rds.models import RDSBackend  # noqa: E402
from moto.server import main  # noqa: E402
from moto.servicediscovery import models as sd  # noqa: E402

TAGS: dict[str, dict[str, str]] = {}


def _body(self) -> dict:
    return json.loads(self.body or "{}")


def list_tags_for_resource(self) -> str:
    return json.dumps({"Tags": TAGS.get(_body(self)["ResourceARN"], {})})


def tag_resource(self) -> str:
    body = _body(self)
    TAGS.setdefault(body["ResourceARN"], {}).update(body.get("Tags", {}))
    return "{}"


def untag_resource(self) -> str:
    body = _body(self)
    for key in body.get("TagKeys", []):
        TAGS.get(body["ResourceARN"], {}).pop(key, None)
    return "{}"


ApplicationAutoScalingResponse.list_tags_for_resource = list_tags_for_resource
ApplicationAutoScalingResponse.tag_resource = tag_resource
ApplicationAutoScalingResponse.untag_resource = untag_resource

_service_init = sd.Service.__init__


def service_init(self, *args, **kwargs):
    _service_init(self, *args, **kwargs)
    if not self.namespace_id and self.dns_config and self.dns_config.get("NamespaceId"):
        self.namespace_id = self.dns_config["NamespaceId"]


sd.Service.__init__ = service_init

_create_service = EC2ContainerServiceResponse.create_service


def create_service(self):
    result = _create_service(self)
    grace = self._get_int_param("healthCheckGracePeriodSeconds")
    name = self._get_param("serviceName")
    for service in self.ecs_backend.services.values():
        if service.name == name:
            service.health_check_grace_period_seconds = grace or 0
            service.availability_zone_rebalancing = (
                self._get_param("availabilityZoneRebalancing") or "DISABLED"
            )
    return result


EC2ContainerServiceResponse.create_service = create_service

_create_db_instance = RDSBackend.create_db_instance


def create_db_instance(self, db_kwargs):
    database = _create_db_instance(self, db_kwargs)
    flag = db_kwargs.get("EnablePerformanceInsights", db_kwargs.get("enable_performance_insights"))
    database.performance_insights_enabled = str(flag).lower() == "true"
    return database


RDSBackend.create_db_instance = create_db_instance

SecurityGroupRule.description = property(
    lambda self: self.ip_range.get("Description")
    or (self.source_group or {}).get("Description")
)

if __name__ == "__main__":
    port = sys.argv[1] if len(sys.argv) > 1 else "5000"
    main(["-H", "127.0.0.1", "-p", port])
