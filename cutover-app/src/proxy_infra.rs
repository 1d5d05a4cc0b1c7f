//! Terraform and an image for the fleet of `cutover proxy` instances: an ECS service of N
//! tasks across the subnets (availability zones) it is given, behind a network load balancer.
//!
//! The load balancer's listener is TCP and the proxy itself speaks TLS: a PostgreSQL client
//! asks for TLS inside the protocol (`SSLRequest`) before any TLS byte, which a TLS listener
//! cannot answer; and libpq's direct TLS (PostgreSQL 17, `sslnegotiation=direct`) requires the
//! ALPN name `postgresql`, which a load balancer's ALPN policies cannot offer. So TLS runs
//! from the application to the proxy, with the certificate of `proxy.tls_cert`, and the
//! certificate and key reach the task as secrets, never as part of the image.
//!
//! Every variable the plan refers to (`${NAME}`) is a key of one Secrets Manager secret
//! (`var.secret_arn`) in the task definition; the plan itself holds no secret and is copied
//! into the image next to a Dockerfile that starts from cutover's own.

use std::path::PathBuf;

use crate::files::Artifact;

/// What the plan says about the proxies, and how many to run.
#[derive(Debug, Clone)]
pub struct ProxyInfra {
    /// Names the resources (`<name>-proxy`).
    pub name: String,
    pub region: String,
    /// Tasks in the service, spread over the subnets.
    pub tasks: u32,
    /// The port of `proxy.listen`: clients connect to it.
    pub listen_port: u16,
    /// The port of `proxy.health_listen` (`/ready` for the load balancer).
    pub health_port: u16,
    /// `proxy.shutdown_timeout`, in seconds: the load balancer waits at least as long
    /// before it drops a deregistered task's connections.
    pub shutdown_timeout_s: u64,
    /// The plan file's text, copied into the image.
    pub plan_text: String,
    /// Every `${NAME}` the plan refers to.
    pub secret_vars: Vec<String>,
    /// `proxy.tls_cert` and `proxy.tls_key` as the plan writes them (relative to the plan).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The first application role, and the database name, for the `DATABASE_URL` output.
    pub user: Option<String>,
    pub dbname: String,
}

/// The variables a plan's text refers to (`${NAME}`), in order, once each; comments skipped.
pub fn referenced_vars(plan_text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for line in plan_text.lines() {
        let mut quoted = false;
        let end = line
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                c == '#' && !quoted
            })
            .map_or(line.len(), |(i, _)| i);
        let mut rest = &line[..end];
        while let Some(i) = rest.find("${") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find('}') else { break };
            let name = &rest[..end];
            let name = name.split(":-").next().unwrap_or(name);
            if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !out.iter().any(|n| n == name)
            {
                out.push(name.to_string());
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// The secret keys of the TLS certificate and key.
const TLS_CERT_KEY: &str = "CUTOVER_PROXY_TLS_CERT_PEM";
const TLS_KEY_KEY: &str = "CUTOVER_PROXY_TLS_KEY_PEM";

/// The port the load balancer listens on: the one every PostgreSQL client expects.
const PUBLIC_PORT: u16 = 5432;

pub fn render(p: &ProxyInfra) -> (Vec<Artifact>, Vec<String>) {
    let mut notes = vec![];
    let mut secret_keys = p.secret_vars.clone();
    if p.tls.is_some() {
        secret_keys.push(TLS_CERT_KEY.into());
        secret_keys.push(TLS_KEY_KEY.into());
    } else {
        notes.push("the plan has no proxy.tls_cert and proxy.tls_key: the proxy would take passwords over the internet in the clear; add them, and put both PEM files in the secret var.secret_arn as CUTOVER_PROXY_TLS_CERT_PEM and CUTOVER_PROXY_TLS_KEY_PEM".into());
    }
    if !secret_keys.is_empty() {
        notes.push(format!(
            "the tasks read {} from the Secrets Manager secret var.secret_arn: create it before `terraform apply`",
            secret_keys.join(", ")
        ));
    }
    notes.push("build and push the image from this folder (`docker build -t <registry>/cutover-proxy .`, after building cutover's own image as `cutover`), then set var.image".into());
    notes.push("Heroku's Common Runtime has no fixed egress addresses: var.allowed_cidrs stays 0.0.0.0/0 for it (TLS and SCRAM guard the port), or list a Private Space's outbound IPs".into());
    let files = vec![
        Artifact::plain("main.tf", main_tf(p, &secret_keys)),
        Artifact::plain("variables.tf", variables_tf(p)),
        Artifact::plain("outputs.tf", outputs_tf(p)),
        Artifact::plain("Dockerfile", dockerfile(p)),
        Artifact::plain("entrypoint.sh", entrypoint(p)),
        Artifact::plain("cutover.toml", p.plan_text.clone()),
    ];
    (files, notes)
}

fn container_path(rel: &std::path::Path) -> String {
    if rel.is_absolute() {
        rel.display().to_string()
    } else {
        format!("/etc/cutover/{}", rel.display())
    }
}

fn dockerfile(p: &ProxyInfra) -> String {
    let mut s = String::from(
        "# The proxy's image: cutover's own (built from the Dockerfile at the root of cutover's\n\
         # sources as `cutover`) with this plan. The plan holds no secret.\n\
         ARG BASE=cutover\n\
         FROM ${BASE}\n\
         USER root\n\
         COPY cutover.toml /etc/cutover/cutover.toml\n\
         COPY --chmod=0755 entrypoint.sh /usr/local/bin/cutover-proxy-entrypoint\n",
    );
    if p.tls.is_some() {
        s.push_str(
            "# The entrypoint writes the TLS certificate and key here, from the task's secrets.\n",
        );
        s.push_str("RUN chown cutover /etc/cutover\n");
    }
    s.push_str(&format!(
        "USER cutover\n\
         ENV CUTOVER_PLAN=/etc/cutover/cutover.toml\n\
         EXPOSE {} {}\n\
         ENTRYPOINT [\"/usr/local/bin/cutover-proxy-entrypoint\"]\n",
        p.listen_port, p.health_port
    ));
    s
}

fn entrypoint(p: &ProxyInfra) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # Starts one proxy of the fleet. The task's own address is what `cutover proxy status`\n\
         # shows; SIGTERM reaches cutover itself (exec), which drains before it exits.\n\
         set -eu\n",
    );
    if let Some((cert, key)) = &p.tls {
        s.push_str(&format!(
            "umask 077\n\
             printf '%s\\n' \"${TLS_CERT_KEY}\" > '{cert}'\n\
             printf '%s\\n' \"${TLS_KEY_KEY}\" > '{key}'\n\
             unset {TLS_CERT_KEY} {TLS_KEY_KEY}\n",
            cert = container_path(cert),
            key = container_path(key),
        ));
    }
    s.push_str(&format!(
        "exec cutover proxy --listen 0.0.0.0:{} --health-listen 0.0.0.0:{} \"$@\"\n",
        p.listen_port, p.health_port
    ));
    s
}

fn variables_tf(p: &ProxyInfra) -> String {
    format!(
        r#"variable "region" {{
  description = "AWS region of the new database"
  type        = string
  default     = "{region}"
}}

variable "vpc_id" {{
  description = "The VPC of the new database"
  type        = string
}}

variable "task_subnet_ids" {{
  description = "Private subnets for the tasks, one per availability zone; they must reach the old and the new database"
  type        = list(string)
}}

variable "public_subnet_ids" {{
  description = "Public subnets for the network load balancer, one per availability zone"
  type        = list(string)
}}

variable "image" {{
  description = "The image built from this folder's Dockerfile"
  type        = string
}}

variable "secret_arn" {{
  description = "ARN of the Secrets Manager secret whose keys are the plan's variables"
  type        = string
}}

variable "tasks" {{
  description = "Proxies in the fleet; they switch as one through the control database"
  type        = number
  default     = {tasks}
}}

variable "cpu" {{
  description = "Fargate CPU units per task"
  type        = string
  default     = "512"
}}

variable "memory" {{
  description = "Fargate memory per task, in MiB"
  type        = string
  default     = "1024"
}}

variable "allowed_cidrs" {{
  description = "Who may connect to the proxy: the old platform's and the new app's egress (Heroku's Common Runtime has no fixed one)"
  type        = list(string)
  default     = ["0.0.0.0/0"]
}}

variable "internal" {{
  description = "An internal load balancer, when every application runs inside the VPC"
  type        = bool
  default     = false
}}
"#,
        region = p.region,
        tasks = p.tasks,
    )
}

fn main_tf(p: &ProxyInfra, secret_keys: &[String]) -> String {
    let secrets = if secret_keys.is_empty() {
        "[]".to_string()
    } else {
        let mut s = String::from("[\n");
        for k in secret_keys {
            s.push_str(&format!(
                "    {{ name = \"{k}\", valueFrom = \"${{var.secret_arn}}:{k}::\" }},\n"
            ));
        }
        s.push_str("  ]");
        s
    };
    let secrets_policy = if secret_keys.is_empty() {
        String::new()
    } else {
        r#"
resource "aws_iam_role_policy" "secrets" {
  name = "${local.name}-read-secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = [var.secret_arn]
    }]
  })
}
"#
        .to_string()
    };
    format!(
        r#"# The cutover proxy fleet: {name}-proxy, N tasks behind a network load balancer.
# Generated by `cutover proxy terraform`; read it, own it.

terraform {{
  required_version = ">= 1.5"

  required_providers {{
    aws = {{
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }}
  }}
}}

provider "aws" {{
  region = var.region
}}

locals {{
  name = "{name}-proxy"
  # Every variable the plan refers to, from one secret; the plan itself is in the image.
  secrets = {secrets}
}}

resource "aws_ecs_cluster" "proxy" {{
  name = local.name

  setting {{
    name  = "containerInsights"
    value = "enabled"
  }}
}}

resource "aws_cloudwatch_log_group" "proxy" {{
  name              = "/ecs/${{local.name}}"
  retention_in_days = 30
}}

resource "aws_iam_role" "execution" {{
  name = "${{local.name}}-ecs-execution"
  assume_role_policy = jsonencode({{
    Version = "2012-10-17"
    Statement = [{{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = {{ Service = "ecs-tasks.amazonaws.com" }}
    }}]
  }})
}}

resource "aws_iam_role_policy_attachment" "execution" {{
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}}
{secrets_policy}
resource "aws_security_group" "nlb" {{
  name        = "${{local.name}}-nlb"
  description = "PostgreSQL clients to the proxy's load balancer"
  vpc_id      = var.vpc_id

  ingress {{
    from_port   = {public}
    to_port     = {public}
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidrs
  }}

  egress {{
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }}
}}

resource "aws_security_group" "tasks" {{
  name        = "${{local.name}}-tasks"
  description = "The proxies: clients and health checks from the load balancer only"
  vpc_id      = var.vpc_id

  ingress {{
    from_port       = {listen}
    to_port         = {listen}
    protocol        = "tcp"
    security_groups = [aws_security_group.nlb.id]
  }}

  ingress {{
    from_port       = {health}
    to_port         = {health}
    protocol        = "tcp"
    security_groups = [aws_security_group.nlb.id]
  }}

  # Both databases, and the control database.
  egress {{
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }}
}}

resource "aws_lb" "proxy" {{
  name               = local.name
  load_balancer_type = "network"
  internal           = var.internal
  subnets            = var.public_subnet_ids
  security_groups    = [aws_security_group.nlb.id]

  enable_cross_zone_load_balancing = true
}}

resource "aws_lb_target_group" "proxy" {{
  name        = local.name
  port        = {listen}
  protocol    = "TCP"
  target_type = "ip"
  vpc_id      = var.vpc_id

  # A stopping task turns unready, then ends each session at a transaction boundary
  # within proxy.shutdown_timeout; the load balancer waits longer than that.
  deregistration_delay = {dereg}

  health_check {{
    protocol            = "HTTP"
    port                = "{health}"
    path                = "/ready"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }}
}}

# TCP, not TLS: a PostgreSQL client asks for TLS inside the protocol, and the proxy answers
# with the certificate of proxy.tls_cert.
resource "aws_lb_listener" "proxy" {{
  load_balancer_arn = aws_lb.proxy.arn
  port              = {public}
  protocol          = "TCP"

  default_action {{
    type             = "forward"
    target_group_arn = aws_lb_target_group.proxy.arn
  }}
}}

resource "aws_ecs_task_definition" "proxy" {{
  family                   = local.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn

  container_definitions = jsonencode([{{
    name         = "proxy"
    image        = var.image
    essential    = true
    stopTimeout  = {stop}
    portMappings = [{{ containerPort = {listen} }}, {{ containerPort = {health} }}]
    secrets      = local.secrets
    logConfiguration = {{
      logDriver = "awslogs"
      options = {{
        awslogs-group         = aws_cloudwatch_log_group.proxy.name
        awslogs-region        = var.region
        awslogs-stream-prefix = "proxy"
      }}
    }}
  }}])
}}

resource "aws_ecs_service" "proxy" {{
  name            = local.name
  cluster         = aws_ecs_cluster.proxy.id
  task_definition = aws_ecs_task_definition.proxy.arn
  desired_count   = var.tasks
  launch_type     = "FARGATE"

  # One task at a time during a deploy: the others keep serving, and a new task joins the
  # fleet on the current backend.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  network_configuration {{
    subnets         = var.task_subnet_ids
    security_groups = [aws_security_group.tasks.id]
  }}

  load_balancer {{
    target_group_arn = aws_lb_target_group.proxy.arn
    container_name   = "proxy"
    container_port   = {listen}
  }}

  depends_on = [aws_lb_listener.proxy]
}}
"#,
        name = p.name,
        public = PUBLIC_PORT,
        listen = p.listen_port,
        health = p.health_port,
        dereg = p.shutdown_timeout_s + 15,
        // ECS allows at most 120 s between SIGTERM and SIGKILL.
        stop = (p.shutdown_timeout_s + 5).min(120),
    )
}

fn outputs_tf(p: &ProxyInfra) -> String {
    let user = p.user.as_deref().unwrap_or("app");
    format!(
        r#"output "proxy_host" {{
  description = "Where the applications connect"
  value       = aws_lb.proxy.dns_name
}}

output "database_url" {{
  description = "The DATABASE_URL both apps use during the move; the password is the role's, from the secret"
  value       = "postgres://{user}:PASSWORD@${{aws_lb.proxy.dns_name}}:{public}/{db}?sslmode=require"
}}
"#,
        public = PUBLIC_PORT,
        db = p.dbname,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_found_once_and_comments_skipped() {
        let t = "url = \"${SOURCE_DATABASE_URL}\"\n# token = \"${NOT_USED}\"\npassword = \"${APP_PW}\" # ${ALSO_NOT}\nurl2 = \"${SOURCE_DATABASE_URL}\"\n";
        assert_eq!(
            referenced_vars(t),
            vec!["SOURCE_DATABASE_URL".to_string(), "APP_PW".to_string()]
        );
    }
}
