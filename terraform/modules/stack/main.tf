# The whole GeeCache-rs stack, wired: network, Cloud Map, ALB, RDS, observability, ECS.
# envs/aws and envs/local differ only in their provider settings and variables.

variable "name" {
  type    = string
  default = "geecache"
}
variable "region" { type = string }
variable "azs" { type = list(string) }
variable "image" { type = string }
variable "certificate_arn" {
  type    = string
  default = null
}
variable "ingress_cidrs" {
  type    = list(string)
  default = ["0.0.0.0/0"]
}
variable "nat_gateway" {
  type    = bool
  default = true
}
variable "desired_count" {
  type    = number
  default = 3
}
variable "frontend_count" {
  type    = number
  default = 0
}
variable "db_instance_class" {
  type    = string
  default = "db.t4g.micro"
}
variable "deletion_protection" {
  type        = bool
  default     = true
  description = "ALB and RDS deletion protection (off only for throwaway and emulator stacks)."
}
variable "alarm_actions" {
  type    = list(string)
  default = []
}
variable "tags" {
  type    = map(string)
  default = { project = "geecache-rs" }
}

module "network" {
  source      = "../network"
  name        = var.name
  azs         = var.azs
  nat_gateway = var.nat_gateway
  tags        = var.tags
}

module "discovery" {
  source = "../discovery"
  vpc_id = module.network.vpc_id
  tags   = var.tags
}

module "alb" {
  source              = "../alb"
  name                = var.name
  vpc_id              = module.network.vpc_id
  subnet_ids          = module.network.public_subnet_ids
  certificate_arn     = var.certificate_arn
  ingress_cidrs       = var.ingress_cidrs
  deletion_protection = var.deletion_protection
  tags                = var.tags
}

module "rds" {
  source                    = "../rds"
  name                      = var.name
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = [module.ecs.nodes_security_group_id]
  instance_class            = var.db_instance_class
  deletion_protection       = var.deletion_protection
  tags                      = var.tags
}

module "observability" {
  source        = "../observability"
  name          = var.name
  region        = var.region
  db_identifier = module.rds.identifier
  alarm_actions = var.alarm_actions
  tags          = var.tags
}

module "ecs" {
  source                  = "../ecs"
  name                    = var.name
  region                  = var.region
  vpc_id                  = module.network.vpc_id
  subnet_ids              = module.network.private_subnet_ids
  image                   = var.image
  alb_security_group_id   = module.alb.security_group_id
  target_group_arn        = module.alb.target_group_arn
  alb_resource_label      = "${module.alb.arn_suffix}/${module.alb.target_group_arn_suffix}"
  discovery_service_arn   = module.discovery.service_arn
  nodes_dns               = module.discovery.nodes_dns
  database_url_secret_arn = module.rds.database_url_secret_arn
  log_group_name          = module.observability.log_group_name
  alb_idle_timeout        = module.alb.idle_timeout
  desired_count           = var.desired_count
  frontend_count          = var.frontend_count
  tags                    = var.tags
}

output "alb_dns_name" { value = module.alb.dns_name }
output "namespace" { value = module.discovery.namespace_name }
output "db_endpoint" { value = module.rds.endpoint }
output "cluster_name" { value = module.ecs.cluster_name }
