# The same stack against a local AWS emulator (moto server by default; LocalStack Pro at
# http://127.0.0.1:4566 works the same way). Emulator settings stay here, out of envs/aws.

terraform {
  required_version = ">= 1.7"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "aws_endpoint" {
  type    = string
  default = "http://127.0.0.1:5000"
}
variable "region" {
  type    = string
  default = "us-east-1"
}
variable "image" {
  type    = string
  default = "geecache:local"
}

provider "aws" {
  region                      = var.region
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  # The account id comes from the emulator's STS, so that security-group references read back
  # as plain sg- ids.
  skip_requesting_account_id = false
  skip_metadata_api_check    = true
  skip_region_validation     = true
  s3_use_path_style          = true
  # Emulators lack some calls; the provider would retry them for many minutes.
  max_retries = 1
  endpoints {
    applicationautoscaling = var.aws_endpoint
    cloudwatch             = var.aws_endpoint
    ec2                    = var.aws_endpoint
    ecs                    = var.aws_endpoint
    elbv2                  = var.aws_endpoint
    iam                    = var.aws_endpoint
    logs                   = var.aws_endpoint
    rds                    = var.aws_endpoint
    secretsmanager         = var.aws_endpoint
    servicediscovery       = var.aws_endpoint
    sts                    = var.aws_endpoint
  }
}

module "stack" {
  source = "../../modules/stack"
  region = var.region
  azs    = ["${var.region}a", "${var.region}b"]
  image  = var.image
  # No certificate against an emulator: the HTTP listener forwards.
  certificate_arn = null
  nat_gateway     = false
  # Throwaway stack: destroy must work.
  deletion_protection = false
}

output "alb_dns_name" { value = module.stack.alb_dns_name }
output "namespace" { value = module.stack.namespace }
output "db_endpoint" { value = module.stack.db_endpoint }
