# ECS Fargate: the cluster (Container Insights), the node service (desired 3, autoscaling 3-12
# on CPU and on requests per target, registered in Cloud Map, behind the ALB), an optional
# frontend service (2-50 tasks), their security groups and least-privilege IAM.

variable "name" { type = string }
variable "region" { type = string }
variable "vpc_id" { type = string }
variable "subnet_ids" { type = list(string) }
variable "image" {
  type        = string
  description = "The geecache image (e.g. <account>.dkr.ecr.<region>.amazonaws.com/geecache:<tag>)."
}
variable "alb_security_group_id" { type = string }
variable "target_group_arn" { type = string }
variable "alb_resource_label" {
  type        = string
  description = "<alb arn suffix>/<target group arn suffix>, for requests-per-target scaling."
}
variable "discovery_service_arn" { type = string }
variable "nodes_dns" { type = string }
variable "database_url_secret_arn" { type = string }
variable "log_group_name" { type = string }
variable "desired_count" {
  type    = number
  default = 3
}
variable "min_count" {
  type    = number
  default = 3
}
variable "max_count" {
  type    = number
  default = 12
}
variable "frontend_count" {
  type        = number
  default     = 0
  description = "Stateless frontend tasks (0: the nodes serve the ALB themselves)."
}
variable "frontend_max_count" {
  type    = number
  default = 50
}
variable "cpu" {
  type    = number
  default = 512
}
variable "memory" {
  type    = number
  default = 1024
}
variable "cache_bytes" {
  type    = number
  default = 402653184
  # 384 MiB in a 1 GiB task: for --handoff-grace after a neighbour leaves, what it sent can
  # take as much again (the handoff store), and each store's hash table is sized at startup
  # (about 50 MiB each at this size): 2 x (384 + 50) MiB plus the runtime fits; 512 MiB would not (computed, not measured).
  description = "--cache-bytes of each task; a task needs about 2.3x this in memory (README, Memory)."
}
variable "alb_idle_timeout" {
  type        = number
  default     = 60
  description = "The ALB's idle timeout in seconds: the tasks' GEECACHE_KEEP_ALIVE is 15 s longer."
}
variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_ecs_cluster" "this" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  tags = var.tags
}

# --- security groups: only the ALB reaches the client port, only nodes (and frontends)
# reach the peer port.
resource "aws_security_group" "nodes" {
  name        = "${var.name}-nodes"
  description = "GeeCache nodes"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "client API from the ALB"
  referenced_security_group_id = var.alb_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 9999
  to_port                      = 9999
}

resource "aws_vpc_security_group_ingress_rule" "peer_from_nodes" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "peer protocol and Raft between nodes"
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = 8001
  to_port                      = 8001
}

resource "aws_vpc_security_group_egress_rule" "nodes_all" {
  security_group_id = aws_security_group.nodes.id
  description       = "peers, PostgreSQL, AWS APIs and image pulls (through NAT)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

resource "aws_security_group" "frontend" {
  count       = var.frontend_count > 0 ? 1 : 0
  name        = "${var.name}-frontend"
  description = "GeeCache frontends"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "frontend_api_from_alb" {
  count                        = var.frontend_count > 0 ? 1 : 0
  security_group_id            = aws_security_group.frontend[0].id
  description                  = "client API from the ALB"
  referenced_security_group_id = var.alb_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 9999
  to_port                      = 9999
}

resource "aws_vpc_security_group_egress_rule" "frontend_all" {
  count             = var.frontend_count > 0 ? 1 : 0
  security_group_id = aws_security_group.frontend[0].id
  description       = "nodes' peer port, AWS APIs, image pulls"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

# DELETEs reach the frontends' hot caches on their peer port.
resource "aws_vpc_security_group_ingress_rule" "frontend_peer_from_nodes" {
  count                        = var.frontend_count > 0 ? 1 : 0
  security_group_id            = aws_security_group.frontend[0].id
  description                  = "peer protocol (DELETE fan-out) from nodes"
  referenced_security_group_id = aws_security_group.nodes.id
  ip_protocol                  = "tcp"
  from_port                    = 8001
  to_port                      = 8001
}

resource "aws_vpc_security_group_ingress_rule" "peer_from_frontend" {
  count                        = var.frontend_count > 0 ? 1 : 0
  security_group_id            = aws_security_group.nodes.id
  description                  = "peer protocol from frontends"
  referenced_security_group_id = aws_security_group.frontend[0].id
  ip_protocol                  = "tcp"
  from_port                    = 8001
  to_port                      = 8001
}

# --- IAM
data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

# What ECS needs to start a task: pull the image, write its logs, read its two secrets.
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # the token call takes no resource
  }
  statement {
    sid       = "EcrPull"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = ["arn:aws:ecr:${var.region}:*:repository/*"]
  }
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["arn:aws:logs:${var.region}:*:log-group:${var.log_group_name}:*"]
  }
  statement {
    sid       = "ReadTheSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.database_url_secret_arn, aws_secretsmanager_secret.peer.arn]
  }
}

# The peer port's shared secret: random, made once, kept in Secrets Manager and handed to the
# tasks as GEECACHE_PEER_SECRET by ECS (never in the task definition's text). Rotate it as the
# README says: add the new one with GEECACHE_PEER_SECRET_ACCEPT, roll, swap, roll, drop.
data "aws_secretsmanager_random_password" "peer" {
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "peer" {
  #checkov:skip=CKV_AWS_149:encrypted with the AWS-managed key; only the task execution role reads it
  #checkov:skip=CKV2_AWS_57:rotation is a rolling restart with GEECACHE_PEER_SECRET_ACCEPT (README), not a Lambda
  name                    = "${var.name}/peer-secret"
  description             = "GEECACHE_PEER_SECRET: the GeeCache nodes' peer and Raft port secret"
  recovery_window_in_days = 0
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "peer" {
  secret_id     = aws_secretsmanager_secret.peer.id
  secret_string = data.aws_secretsmanager_random_password.peer.random_password
  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-tasks"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

# Discovery reads Cloud Map and ECS; these read APIs take no resource-level ARNs except
# DescribeTasks, which is scoped to this cluster.
data "aws_iam_policy_document" "task" {
  statement {
    sid       = "CloudMapDiscovery"
    actions   = ["servicediscovery:DiscoverInstances"]
    resources = ["*"]
  }
  statement {
    sid       = "EcsListTasks"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }
  statement {
    sid       = "EcsDescribeTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = ["arn:aws:ecs:${var.region}:*:task/${var.name}/*"]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "discovery"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# --- tasks
locals {
  common_env = [
    { name = "GEECACHE_SEEDS", value = "dns://${var.nodes_dns}:8001" },
    { name = "GEECACHE_SOURCE", value = "postgres" },
    { name = "GEECACHE_CACHE_BYTES", value = tostring(var.cache_bytes) },
    { name = "GEECACHE_DRAIN_DELAY", value = "5s" },
    { name = "GEECACHE_LOG_FORMAT", value = "json" },
    # Idle connections outlive the ALB's, or the ALB can send on one as the task closes it.
    { name = "GEECACHE_KEEP_ALIVE", value = "${var.alb_idle_timeout + 15}s" },
  ]
  secrets = [
    { name = "GEECACHE_DATABASE_URL", valueFrom = var.database_url_secret_arn },
    { name = "GEECACHE_PEER_SECRET", valueFrom = aws_secretsmanager_secret.peer.arn },
  ]
  logging = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = var.log_group_name
      awslogs-region        = var.region
      awslogs-stream-prefix = "geecache"
    }
  }
  health = {
    command     = ["CMD", "geecache", "health", "--url", "http://127.0.0.1:9999/health"]
    interval    = 10
    timeout     = 3
    retries     = 3
    startPeriod = 10
  }
}

resource "aws_ecs_task_definition" "node" {
  family                   = "${var.name}-node"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  # The root filesystem is read-only; the Raft log lives on the task's ephemeral volume.
  volume {
    name = "data"
  }
  container_definitions = jsonencode([{
    name                   = "geecache"
    image                  = var.image
    essential              = true
    command                = ["node"]
    readonlyRootFilesystem = true
    mountPoints            = [{ sourceVolume = "data", containerPath = "/data", readOnly = false }]
    portMappings = [
      { containerPort = 9999, protocol = "tcp" },
      { containerPort = 8001, protocol = "tcp" },
    ]
    environment = concat(local.common_env, [
      { name = "GEECACHE_SELF", value = "http://auto:8001" },
      { name = "GEECACHE_BOOTSTRAP_EXPECT", value = tostring(var.desired_count) },
    ])
    secrets          = local.secrets
    logConfiguration = local.logging
    healthCheck      = local.health
    stopTimeout      = 30
  }])
  tags = var.tags
}

resource "aws_ecs_service" "nodes" {
  name                               = "${var.name}-nodes"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.node.arn
  desired_count                      = var.desired_count
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 150
  health_check_grace_period_seconds  = 30
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.nodes.id]
    assign_public_ip = false
  }
  service_registries {
    registry_arn = var.discovery_service_arn
  }
  load_balancer {
    target_group_arn = var.target_group_arn
    container_name   = "geecache"
    container_port   = 9999
  }
  lifecycle {
    ignore_changes = [desired_count] # autoscaling owns it after creation
  }
  tags = var.tags
}

resource "aws_appautoscaling_target" "nodes" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.nodes.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_count
  max_capacity       = var.max_count
}

resource "aws_appautoscaling_policy" "nodes_cpu" {
  name               = "${var.name}-nodes-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.nodes.service_namespace
  resource_id        = aws_appautoscaling_target.nodes.resource_id
  scalable_dimension = aws_appautoscaling_target.nodes.scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = 60
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "nodes_requests" {
  name               = "${var.name}-nodes-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.nodes.service_namespace
  resource_id        = aws_appautoscaling_target.nodes.resource_id
  scalable_dimension = aws_appautoscaling_target.nodes.scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = 20000
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = var.alb_resource_label
    }
  }
}

resource "aws_ecs_task_definition" "frontend" {
  count                    = var.frontend_count > 0 ? 1 : 0
  family                   = "${var.name}-frontend"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions = jsonencode([{
    name                   = "geecache"
    image                  = var.image
    essential              = true
    command                = ["node", "--role", "frontend"]
    readonlyRootFilesystem = true
    portMappings = [
      { containerPort = 9999, protocol = "tcp" },
      { containerPort = 8001, protocol = "tcp" },
    ]
    environment = concat(local.common_env, [
      { name = "GEECACHE_SELF", value = "http://auto:8001" },
    ])
    secrets          = local.secrets
    logConfiguration = local.logging
    healthCheck      = local.health
    stopTimeout      = 30
  }])
  tags = var.tags
}

resource "aws_ecs_service" "frontend" {
  count           = var.frontend_count > 0 ? 1 : 0
  name            = "${var.name}-frontend"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.frontend[0].arn
  desired_count   = var.frontend_count
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.frontend[0].id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = var.target_group_arn
    container_name   = "geecache"
    container_port   = 9999
  }
  lifecycle {
    ignore_changes = [desired_count]
  }
  tags = var.tags
}

resource "aws_appautoscaling_target" "frontend" {
  count              = var.frontend_count > 0 ? 1 : 0
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.frontend[0].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = 2
  max_capacity       = var.frontend_max_count
}

resource "aws_appautoscaling_policy" "frontend_cpu" {
  count              = var.frontend_count > 0 ? 1 : 0
  name               = "${var.name}-frontend-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.frontend[0].service_namespace
  resource_id        = aws_appautoscaling_target.frontend[0].resource_id
  scalable_dimension = aws_appautoscaling_target.frontend[0].scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

output "cluster_name" { value = aws_ecs_cluster.this.name }
output "nodes_service_name" { value = aws_ecs_service.nodes.name }
output "nodes_security_group_id" { value = aws_security_group.nodes.id }
output "task_role_arn" { value = aws_iam_role.task.arn }
