# PostgreSQL 15 on RDS, Multi-AZ, encrypted, reachable only from the nodes. The whole
# connection URL lives in Secrets Manager and reaches the tasks as GEECACHE_DATABASE_URL.

variable "name" { type = string }
variable "vpc_id" { type = string }
variable "subnet_ids" { type = list(string) }
variable "client_security_group_ids" {
  type        = list(string)
  description = "Security groups allowed to reach the database (the nodes')."
}
variable "instance_class" {
  type    = string
  default = "db.t4g.micro"
}
variable "allocated_storage" {
  type    = number
  default = 20
}
variable "multi_az" {
  type    = bool
  default = true
}
variable "deletion_protection" {
  type    = bool
  default = true
}
variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "GeeCache PostgreSQL: 5432 from the nodes only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "from_nodes" {
  count                        = length(var.client_security_group_ids)
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from GeeCache nodes"
  referenced_security_group_id = var.client_security_group_ids[count.index]
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_db_subnet_group" "this" {
  name       = var.name
  subnet_ids = var.subnet_ids
  tags       = var.tags
}

data "aws_secretsmanager_random_password" "db" {
  password_length     = 32
  exclude_punctuation = true
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_118:Performance Insights and the CloudWatch alarms cover the database; enhanced monitoring needs another IAM role
  #checkov:skip=CKV_AWS_354:Performance Insights uses the AWS-managed key
  #checkov:skip=CKV2_AWS_30:query logging would log every cache miss; pg_stat_statements counts them instead
  identifier                          = var.name
  engine                              = "postgres"
  engine_version                      = "15"
  instance_class                      = var.instance_class
  allocated_storage                   = var.allocated_storage
  storage_type                        = "gp3"
  storage_encrypted                   = true
  multi_az                            = var.multi_az
  db_name                             = "geecache"
  username                            = "geecache"
  password                            = data.aws_secretsmanager_random_password.db.random_password
  db_subnet_group_name                = aws_db_subnet_group.this.name
  vpc_security_group_ids              = [aws_security_group.db.id]
  publicly_accessible                 = false
  backup_retention_period             = 7
  deletion_protection                 = var.deletion_protection
  skip_final_snapshot                 = true
  auto_minor_version_upgrade          = true
  copy_tags_to_snapshot               = true
  performance_insights_enabled        = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql"]
  lifecycle {
    ignore_changes = [password]
  }
  tags = var.tags
}

resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV_AWS_149:encrypted with the AWS-managed key; only the task execution role reads it
  #checkov:skip=CKV2_AWS_57:rotating the password needs a rotation Lambda and a node restart; not automated yet
  name                    = "${var.name}/database-url"
  description             = "GEECACHE_DATABASE_URL of the GeeCache nodes"
  recovery_window_in_days = 0
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id     = aws_secretsmanager_secret.database_url.id
  secret_string = "postgres://geecache:${data.aws_secretsmanager_random_password.db.random_password}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/geecache"
  lifecycle {
    ignore_changes = [secret_string]
  }
}

output "endpoint" { value = aws_db_instance.this.address }
output "identifier" { value = aws_db_instance.this.identifier }
output "multi_az" { value = aws_db_instance.this.multi_az }
output "database_url_secret_arn" { value = aws_secretsmanager_secret.database_url.arn }
output "security_group_id" { value = aws_security_group.db.id }
