# The stack's wiring, checked offline with a mocked AWS provider (`terraform test`).

mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/geecache/0123456789abcdef" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/geecache-api/0123456789abcdef" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/geecache" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:geecache/database-url-AbCdEf" }
  }
  mock_resource "aws_service_discovery_service" {
    defaults = { arn = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-0123456789" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:cluster/geecache" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/geecache-node:1" }
  }
  mock_resource "aws_ecs_service" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:service/geecache/geecache-nodes" }
  }
  mock_resource "aws_db_instance" {
    defaults = { arn = "arn:aws:rds:us-east-1:123456789012:db:geecache" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:/ecs/geecache" }
  }
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "mock-password-0123456789abcdef" }
  }
}

variables {
  region          = "us-east-1"
  azs             = ["us-east-1a", "us-east-1b"]
  image           = "geecache:test"
  certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/test"
}

# The whole stack applies (mocked) and answers with what an operator needs.
run "stack" {
  command = apply

  assert {
    condition     = output.namespace == "geecache.local"
    error_message = "Cloud Map namespace geecache.local"
  }
  assert {
    condition     = output.alb_dns_name != "" && output.db_endpoint != ""
    error_message = "outputs: ALB DNS name and DB endpoint"
  }
}

run "nodes_service" {
  command = apply
  module {
    source = "../ecs"
  }
  override_resource {
    target = aws_secretsmanager_secret.peer
    values = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:geecache/peer-secret-XyZ" }
  }
  override_data {
    target = data.aws_secretsmanager_random_password.peer
    values = { random_password = "mock-peer-secret-0123456789abcdef" }
  }
  variables {
    name                    = "geecache"
    vpc_id                  = "vpc-0123"
    subnet_ids              = ["subnet-a", "subnet-b"]
    alb_security_group_id   = "sg-alb"
    target_group_arn        = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/geecache-api/0123456789abcdef"
    alb_resource_label      = "app/geecache/0123/targetgroup/geecache-api/4567"
    discovery_service_arn   = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-nodes"
    nodes_dns               = "nodes.geecache.local"
    database_url_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:geecache/database-url-AbCdEf"
    log_group_name          = "/ecs/geecache"
  }

  assert {
    condition     = aws_ecs_service.nodes.desired_count == 3
    error_message = "three nodes by default"
  }
  assert {
    condition     = aws_appautoscaling_target.nodes.min_capacity == 3 && aws_appautoscaling_target.nodes.max_capacity == 12
    error_message = "nodes scale between 3 and 12"
  }
  assert {
    condition     = length(aws_appautoscaling_policy.nodes_requests.target_tracking_scaling_policy_configuration) == 1 && length(aws_appautoscaling_policy.nodes_cpu.target_tracking_scaling_policy_configuration) == 1
    error_message = "scaling on CPU and on requests per target"
  }
  assert {
    condition     = one(aws_ecs_service.nodes.service_registries).registry_arn == var.discovery_service_arn
    error_message = "the node service registers its tasks in Cloud Map's nodes service"
  }
  assert {
    condition     = one(aws_ecs_service.nodes.load_balancer).container_port == 9999 && one(aws_ecs_service.nodes.load_balancer).target_group_arn == var.target_group_arn
    error_message = "the ALB targets the client port"
  }
  assert {
    condition     = one(aws_ecs_cluster.this.setting).value == "enabled"
    error_message = "Container Insights on"
  }
  assert {
    condition     = strcontains(aws_ecs_task_definition.node.container_definitions, "dns://nodes.geecache.local:8001") && strcontains(aws_ecs_task_definition.node.container_definitions, var.database_url_secret_arn)
    error_message = "Cloud Map DNS discovery, and the database URL as a secret"
  }
  assert {
    condition     = strcontains(aws_ecs_task_definition.node.container_definitions, "\"GEECACHE_PEER_SECRET\"") && strcontains(aws_ecs_task_definition.node.container_definitions, aws_secretsmanager_secret.peer.arn) && !strcontains(aws_ecs_task_definition.node.container_definitions, data.aws_secretsmanager_random_password.peer.random_password)
    error_message = "the peer secret reaches the tasks from Secrets Manager, never as plain text in the task definition"
  }
  assert {
    condition     = strcontains(aws_ecs_task_definition.node.container_definitions, "\"GEECACHE_KEEP_ALIVE\",\"value\":\"75s\"")
    error_message = "the tasks keep idle connections 75 s, longer than the ALB's 60 s"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.api_from_alb.referenced_security_group_id == "sg-alb" && aws_vpc_security_group_ingress_rule.api_from_alb.from_port == 9999
    error_message = "only the ALB reaches the client port"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.peer_from_nodes.referenced_security_group_id == aws_security_group.nodes.id && aws_vpc_security_group_ingress_rule.peer_from_nodes.from_port == 8001
    error_message = "only nodes reach the peer port"
  }
  assert {
    condition     = length(aws_ecs_service.frontend) == 0 && length(aws_vpc_security_group_ingress_rule.peer_from_frontend) == 0
    error_message = "no frontend without frontend_count"
  }
}

run "frontends" {
  command = apply
  module {
    source = "../ecs"
  }
  variables {
    name                    = "geecache"
    vpc_id                  = "vpc-0123"
    subnet_ids              = ["subnet-a", "subnet-b"]
    alb_security_group_id   = "sg-alb"
    target_group_arn        = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/geecache-api/0123456789abcdef"
    alb_resource_label      = "app/geecache/0123/targetgroup/geecache-api/4567"
    discovery_service_arn   = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-nodes"
    nodes_dns               = "nodes.geecache.local"
    database_url_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:geecache/database-url-AbCdEf"
    log_group_name          = "/ecs/geecache"
    frontend_count          = 2
  }

  assert {
    condition     = aws_ecs_service.frontend[0].desired_count == 2 && aws_appautoscaling_target.frontend[0].min_capacity == 2 && aws_appautoscaling_target.frontend[0].max_capacity == 50
    error_message = "frontends: 2 tasks, autoscaling 2-50"
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.peer_from_frontend[0].referenced_security_group_id == aws_security_group.frontend[0].id
    error_message = "frontends reach the nodes' peer port"
  }
}

run "discovery" {
  command = apply
  module {
    source = "../discovery"
  }
  variables {
    vpc_id = "vpc-0123"
  }

  assert {
    condition     = aws_service_discovery_private_dns_namespace.this.name == "geecache.local" && aws_service_discovery_service.nodes.name == "nodes"
    error_message = "nodes.geecache.local"
  }
  assert {
    condition     = one(one(aws_service_discovery_service.nodes.dns_config).dns_records).type == "A" && one(one(aws_service_discovery_service.nodes.dns_config).dns_records).ttl == 10
    error_message = "A records with TTL 10"
  }
}

run "database" {
  command = apply
  module {
    source = "../rds"
  }
  variables {
    name                      = "geecache"
    vpc_id                    = "vpc-0123"
    subnet_ids                = ["subnet-a", "subnet-b"]
    client_security_group_ids = ["sg-nodes"]
  }

  assert {
    condition     = aws_db_instance.this.multi_az && aws_db_instance.this.storage_encrypted && !aws_db_instance.this.publicly_accessible
    error_message = "private, encrypted, Multi-AZ"
  }
  assert {
    condition     = aws_db_instance.this.engine == "postgres" && startswith(aws_db_instance.this.engine_version, "15")
    error_message = "PostgreSQL 15"
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.from_nodes) == 1 && aws_vpc_security_group_ingress_rule.from_nodes[0].referenced_security_group_id == "sg-nodes" && aws_vpc_security_group_ingress_rule.from_nodes[0].from_port == 5432
    error_message = "only the nodes reach the database"
  }
}

run "alb" {
  command = apply
  module {
    source = "../alb"
  }
  variables {
    name            = "geecache"
    vpc_id          = "vpc-0123"
    subnet_ids      = ["subnet-a", "subnet-b"]
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/test"
  }

  assert {
    condition     = aws_lb.this.idle_timeout == 60 && output.idle_timeout == 60
    error_message = "the ALB's idle timeout is set (60 s), and handed to the tasks' keep-alive"
  }
  assert {
    condition     = one(aws_lb_listener.http.default_action).type == "redirect"
    error_message = "HTTP redirects to HTTPS"
  }
  assert {
    condition     = aws_lb_listener.https[0].port == 443 && aws_lb_listener.https[0].certificate_arn == var.certificate_arn
    error_message = "HTTPS listener with the certificate"
  }
  assert {
    condition     = one(aws_lb_target_group.api.health_check).path == "/ready" && aws_lb_target_group.api.port == 9999 && aws_lb_target_group.api.target_type == "ip"
    error_message = "target group on 9999 (Fargate IPs), health check /ready"
  }
}
