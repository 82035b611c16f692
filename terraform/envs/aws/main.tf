# Real AWS: `terraform -chdir=terraform/envs/aws apply -var image=... -var certificate_arn=...`

terraform {
  required_version = ">= 1.7"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}
variable "azs" {
  type    = list(string)
  default = ["us-east-1a", "us-east-1b"]
}
variable "image" {
  type        = string
  description = "The geecache image in ECR."
}
variable "certificate_arn" {
  type        = string
  description = "ACM certificate for the ALB's HTTPS listener."
}
variable "frontend_count" {
  type    = number
  default = 0
}
variable "alarm_actions" {
  type    = list(string)
  default = []
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { project = "geecache-rs" }
  }
}

module "stack" {
  source          = "../../modules/stack"
  region          = var.region
  azs             = var.azs
  image           = var.image
  certificate_arn = var.certificate_arn
  frontend_count  = var.frontend_count
  alarm_actions   = var.alarm_actions
}

output "alb_dns_name" { value = module.stack.alb_dns_name }
output "namespace" { value = module.stack.namespace }
output "db_endpoint" { value = module.stack.db_endpoint }
