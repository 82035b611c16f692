# CloudWatch: the log group the tasks write JSON logs to (awslogs driver), alarms (cluster hit
# rate < 85 %, p99 > 50 ms, database load) on the nodes' Embedded Metric Format metrics
# (namespace GeeCache, `geecache node --emf`) and RDS, and a dashboard.

variable "name" { type = string }
variable "region" { type = string }
variable "db_identifier" { type = string }
variable "retention_days" {
  type    = number
  default = 30
}
variable "alarm_actions" {
  type        = list(string)
  default     = []
  description = "SNS topic ARNs to notify."
}
variable "tags" {
  type    = map(string)
  default = {}
}

locals {
  namespace = "GeeCache"
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:the logs hold no keys, values or secrets; encrypted at rest with the service key
  #checkov:skip=CKV_AWS_338:retention is a cost choice (var.retention_days, 30 by default)
  name              = "/ecs/${var.name}"
  retention_in_days = var.retention_days
  tags              = var.tags
}

resource "aws_cloudwatch_metric_alarm" "hit_rate" {
  alarm_name          = "${var.name}-hit-rate-below-85"
  alarm_description   = "Cluster cache hit rate under 85 % for 10 minutes"
  comparison_operator = "LessThanThreshold"
  threshold           = 85
  evaluation_periods  = 10
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  metric_query {
    id          = "rate"
    expression  = "100 * hits / MAX([gets, 1])"
    label       = "hit rate %"
    return_data = true
  }
  metric_query {
    id = "hits"
    metric {
      namespace   = local.namespace
      metric_name = "CacheHits"
      period      = 60
      stat        = "Sum"
    }
  }
  metric_query {
    id = "gets"
    metric {
      namespace   = local.namespace
      metric_name = "Gets"
      period      = 60
      stat        = "Sum"
    }
  }
  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "p99" {
  alarm_name          = "${var.name}-p99-over-50ms"
  alarm_description   = "p99 of client API requests over 50 ms for 5 minutes"
  namespace           = local.namespace
  metric_name         = "RequestLatency"
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 5
  threshold           = 50
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "db_cpu" {
  alarm_name          = "${var.name}-db-cpu-over-80"
  alarm_description   = "Database load: RDS CPU over 80 % for 5 minutes (misses reach the database)"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = var.db_identifier }
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 5
  threshold           = 80
  comparison_operator = "GreaterThanThreshold"
  alarm_actions       = var.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "db_queries" {
  alarm_name          = "${var.name}-db-loads-over-5000-per-s"
  alarm_description   = "Database load: loads reaching PostgreSQL over 5000/s (the seed's alert)"
  namespace           = local.namespace
  metric_name         = "Loads"
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 300000
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.name
  dashboard_body = jsonencode({
    widgets = [
      {
        type = "metric", x = 0, y = 0, width = 12, height = 6
        properties = {
          title   = "Gets, hits, loads", region = var.region, stat = "Sum", period = 60
          metrics = [[local.namespace, "Gets"], [".", "CacheHits"], [".", "Loads"], [".", "PeerLoads"]]
        }
      },
      {
        type = "metric", x = 12, y = 0, width = 12, height = 6
        properties = {
          title   = "Request latency (ms)", region = var.region, period = 60
          metrics = [[local.namespace, "RequestLatency", { stat = "p50" }], ["...", { stat = "p99" }]]
        }
      },
      {
        type = "metric", x = 0, y = 6, width = 12, height = 6
        properties = {
          title   = "Database", region = var.region, stat = "Average", period = 60
          metrics = [["AWS/RDS", "CPUUtilization", "DBInstanceIdentifier", var.db_identifier], [".", "DatabaseConnections", ".", "."]]
        }
      },
    ]
  })
}

output "log_group_name" { value = aws_cloudwatch_log_group.this.name }
output "alarm_names" {
  value = [aws_cloudwatch_metric_alarm.hit_rate.alarm_name, aws_cloudwatch_metric_alarm.p99.alarm_name,
  aws_cloudwatch_metric_alarm.db_cpu.alarm_name, aws_cloudwatch_metric_alarm.db_queries.alarm_name]
}
