output "load_balancer_dns_name" {
  description = "Where the ecs record points."
  value       = aws_lb.app.dns_name
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.main.name
}

output "task_security_group_id" {
  description = "Allow this group into the database's security group."
  value       = aws_security_group.tasks.id
}

output "release_task_definition_arn" {
  description = "Run once per deploy, before the services update (the release phase)."
  value       = aws_ecs_task_definition.release.arn
}
