variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "vpc_id" {
  description = "VPC of the load balancer and the tasks."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets for the load balancer (two or more zones)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets for the tasks, with a route to the database and to ECR."
  type        = list(string)
}

variable "image" {
  description = "The app's image (built from the generated Dockerfile or project.toml)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for the domain, for the HTTPS listener."
  type        = string
}

variable "zone_id" {
  description = "Route 53 hosted zone of the domain."
  type        = string
}

variable "domain" {
  description = "The app's hostname; a CNAME, so not the zone apex."
  type        = string
  default     = "www.go-hello.example"
}

variable "heroku_target" {
  description = "The DNS target Heroku gave for the domain (heroku domains), the old origin."
  type        = string
}

variable "heroku_weight" {
  description = "Share of DNS answers for Heroku (0-255) when the records are made; `cutover dns` and the canary move it after."
  type        = number
  default     = 100
}

variable "ecs_weight" {
  description = "Share of DNS answers for ECS (0-255) when the records are made; `cutover dns` and the canary move it after."
  type        = number
  default     = 0
}

variable "web_count" {
  description = "Web tasks (from app.json's formation when it says)."
  type        = number
  default     = 1
}

variable "health_check_path" {
  description = "Path the load balancer checks on each web task."
  type        = string
  default     = "/"
}

variable "secret_arn" {
  description = "Secrets Manager secret holding the app's secrets, one JSON key per variable."
  type        = string
}
