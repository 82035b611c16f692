# Cloud Map: the private DNS namespace geecache.local and its service "nodes" (A records,
# TTL 10), which the ECS service registers its tasks in. Nodes find candidates with
# --seeds dns://nodes.geecache.local:8001; Raft decides membership.

variable "namespace" {
  type    = string
  default = "geecache.local"
}
variable "vpc_id" { type = string }
variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = var.namespace
  description = "GeeCache-rs nodes"
  vpc         = var.vpc_id
  tags        = var.tags
}

resource "aws_service_discovery_service" "nodes" {
  name = "nodes"
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
  tags = var.tags
}

output "namespace_id" { value = aws_service_discovery_private_dns_namespace.this.id }
output "namespace_name" { value = aws_service_discovery_private_dns_namespace.this.name }
output "service_arn" { value = aws_service_discovery_service.nodes.arn }
output "service_id" { value = aws_service_discovery_service.nodes.id }
output "nodes_dns" { value = "nodes.${var.namespace}" }
