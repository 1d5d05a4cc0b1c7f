//! Terraform for the app on ECS Fargate behind an ALB, reached through Route 53 weighted
//! records so traffic moves from Heroku step by step.
//!
//! Plain resources, no modules: the output is meant to be read, reviewed and owned by the
//! team, and a module hides exactly the parts (health check, secrets, security groups) that
//! a move gets wrong. What is not known from the app (VPC, subnets, certificate, zone, image)
//! is a variable. Secrets stay out of the Terraform: the task definition's `secrets` point at
//! keys of one Secrets Manager secret (`var.secret_arn`), which `cutover app env --to
//! secrets-manager` fills; plain values are in the task definition, where a review sees them.
//!
//! Both DNS records carry the same name and type (CNAME) with a weight each: `heroku`
//! (the old origin) starts at 100 and `ecs` at 0, and a shift is a change of two numbers.
//! Their set identifiers are the ones `cutover dns` and the canary move
//! (`cutover-old`, `cutover-new`): they are the same two records, and Terraform leaves their
//! TTL and weights to cutover (`ignore_changes`), so a later `terraform apply` never undoes a
//! shift nor cutover a Terraform record.

use crate::dockerfile::{self, PORT};
use crate::export::{self, Target, Val};
use crate::files::Artifact;
use crate::hcl::{self, attr, block, call, list, nested, obj, raw, s, tpl, Block, Expr, Item};
use crate::inspect::{self, Inspection};
use crate::AppError;

#[derive(Debug, Clone)]
pub struct Options {
    /// The public hostname the weighted records answer for (`www.example.com`).
    pub domain: Option<String>,
    /// The path the load balancer checks.
    pub health_path: String,
    pub region: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            domain: None,
            health_path: "/".to_string(),
            region: "us-east-1".to_string(),
        }
    }
}

/// Fargate CPU and memory for a Heroku dyno size, the smallest Fargate size that holds the
/// dyno's memory.
pub fn fargate_size(dyno: Option<&str>) -> (&'static str, &'static str) {
    match dyno.map(|d| d.to_ascii_lowercase()).as_deref() {
        Some("standard-2x") | Some("2x") => ("512", "1024"),
        Some("performance-m") | Some("performance") => ("1024", "3072"),
        Some("performance-l") => ("4096", "16384"),
        Some("performance-l-ram") => ("4096", "30720"),
        Some("performance-xl") => ("8192", "61440"),
        Some("performance-2xl") => ("16384", "122880"),
        _ => ("256", "512"),
    }
}

fn var(name: &str, kind: &str, description: &str, default: Option<Expr>) -> Block {
    let mut body = vec![attr("description", s(description)), attr("type", raw(kind))];
    if let Some(d) = default {
        body.push(attr("default", d));
    }
    block("variable", &[name], body)
}

struct Container<'a> {
    name: &'a str,
    command: &'a str,
    port: bool,
}

fn container(c: &Container) -> Expr {
    let mut items = vec![
        ("name", s(c.name)),
        ("image", raw("var.image")),
        ("essential", raw("true")),
        (
            "command",
            list(vec![
                s("/bin/sh"),
                s("-c"),
                s(dockerfile::shell_command(c.command)),
            ]),
        ),
    ];
    if c.port {
        items.push((
            "portMappings",
            list(vec![obj(vec![
                ("containerPort", raw(PORT.to_string())),
                ("protocol", s("tcp")),
            ])]),
        ));
    }
    items.push(("environment", raw("local.environment")));
    items.push(("secrets", raw("local.secrets")));
    items.push((
        "logConfiguration",
        obj(vec![
            ("logDriver", s("awslogs")),
            (
                "options",
                obj(vec![
                    (
                        "\"awslogs-group\"",
                        raw("aws_cloudwatch_log_group.app.name"),
                    ),
                    ("\"awslogs-region\"", raw("var.region")),
                    ("\"awslogs-stream-prefix\"", s(c.name)),
                ]),
            ),
        ]),
    ));
    list(vec![obj(items)])
}

fn task_definition(ins: &Inspection, c: &Container) -> Block {
    let (cpu, memory) = fargate_size(ins.size(c.name).or(ins.size("web")));
    block(
        "resource",
        &["aws_ecs_task_definition", c.name],
        vec![
            attr("family", tpl(format!("${{local.name}}-{}", c.name))),
            attr("requires_compatibilities", list(vec![s("FARGATE")])),
            attr("network_mode", s("awsvpc")),
            attr("cpu", s(cpu)),
            attr("memory", s(memory)),
            attr("execution_role_arn", raw("aws_iam_role.execution.arn")),
            attr(
                "container_definitions",
                call("jsonencode", vec![container(c)]),
            ),
        ],
    )
}

fn sg_rule(kind: &str, from: &str, to: &str, protocol: &str, source: Item) -> Item {
    nested(
        kind,
        vec![
            attr("from_port", raw(from)),
            attr("to_port", raw(to)),
            attr("protocol", s(protocol)),
            source,
        ],
    )
}

fn all_egress() -> Item {
    sg_rule(
        "egress",
        "0",
        "0",
        "-1",
        attr("cidr_blocks", list(vec![s("0.0.0.0/0")])),
    )
}

fn weighted(name: &str, set: &str, target: Expr, weight: &str) -> Block {
    block(
        "resource",
        &["aws_route53_record", name],
        vec![
            attr("zone_id", raw("var.zone_id")),
            attr("name", raw("var.domain")),
            attr("type", s("CNAME")),
            attr("ttl", raw("60")),
            attr("records", list(vec![target])),
            attr("set_identifier", s(set)),
            Item::Blank,
            nested("weighted_routing_policy", vec![attr("weight", raw(weight))]),
            Item::Blank,
            nested(
                "lifecycle",
                vec![attr(
                    "ignore_changes",
                    list(vec![raw("ttl"), raw("weighted_routing_policy")]),
                )],
            ),
        ],
    )
}

/// The Terraform files (`main.tf`, `variables.tf`, `outputs.tf`) and notes.
pub fn render(ins: &Inspection, opts: &Options) -> Result<(Vec<Artifact>, Vec<String>), AppError> {
    let web = ins.require_web()?;
    let env = inspect::env_or_manifest(ins);
    let (entries, mut notes) = export::entries(
        &env,
        Target::Ecs,
        &export::Options {
            app: ins.name.clone(),
            port: PORT,
            ..Default::default()
        },
    );
    let mut plain: Vec<(String, Expr)> = vec![];
    let mut secrets: Vec<String> = vec![];
    for e in &entries {
        match (&e.value, e.secret) {
            (_, true) => secrets.push(e.name.clone()),
            (Val::Known(v), false) => plain.push((e.name.clone(), s(v.expose()))),
            (Val::Placeholder(p), false) => plain.push((e.name.clone(), s(p.clone()))),
        }
    }
    if !plain.iter().any(|(n, _)| n == "PORT") {
        plain.push(("PORT".into(), s(PORT.to_string())));
        plain.sort_by(|a, b| a.0.cmp(&b.0));
    }
    if ins.env.is_none() {
        notes.push("no --config given: the task definition declares app.json's variables only; pass --config heroku-config.json for all of them".into());
    }
    if !secrets.is_empty() {
        notes.push(format!(
            "the task reads {} from the Secrets Manager secret var.secret_arn: create it with `cutover app env --to secrets-manager`",
            secrets.join(", ")
        ));
    }
    if ins.language.traits.iter().any(|t| t == "django") {
        notes.push("the load balancer's health check sends the task's IP as Host: Django's ALLOWED_HOSTS must accept it, or the check gets 400".into());
    }

    let mut blocks = vec![
        block(
            "terraform",
            &[],
            vec![
                attr("required_version", s(">= 1.5")),
                Item::Blank,
                nested(
                    "required_providers",
                    vec![attr(
                        "aws",
                        obj(vec![
                            ("source", s("hashicorp/aws")),
                            ("version", s("~> 5.0")),
                        ]),
                    )],
                ),
            ],
        ),
        block(
            "provider",
            &["aws"],
            vec![attr("region", raw("var.region"))],
        ),
        block(
            "locals",
            &[],
            vec![
                attr("name", s(&ins.name)),
                Item::Comment("plain values, in every container of the app".into()),
                attr(
                    "environment",
                    list(
                        plain
                            .iter()
                            .map(|(n, v)| obj(vec![("name", s(n.clone())), ("value", v.clone())]))
                            .collect(),
                    ),
                ),
                Item::Comment("keys of the Secrets Manager secret var.secret_arn".into()),
                attr(
                    "secrets",
                    list(
                        secrets
                            .iter()
                            .map(|n| {
                                obj(vec![
                                    ("name", s(n.clone())),
                                    ("valueFrom", tpl(format!("${{var.secret_arn}}:{n}::"))),
                                ])
                            })
                            .collect(),
                    ),
                ),
            ],
        ),
        block(
            "resource",
            &["aws_ecs_cluster", "main"],
            vec![
                attr("name", raw("local.name")),
                Item::Blank,
                nested(
                    "setting",
                    vec![
                        attr("name", s("containerInsights")),
                        attr("value", s("enabled")),
                    ],
                ),
            ],
        ),
        block(
            "resource",
            &["aws_cloudwatch_log_group", "app"],
            vec![
                attr("name", tpl("/ecs/${local.name}")),
                attr("retention_in_days", raw("30")),
            ],
        ),
        block(
            "resource",
            &["aws_iam_role", "execution"],
            vec![
                attr("name", tpl("${local.name}-ecs-execution")),
                attr(
                    "assume_role_policy",
                    call(
                        "jsonencode",
                        vec![obj(vec![
                            ("Version", s("2012-10-17")),
                            (
                                "Statement",
                                list(vec![obj(vec![
                                    ("Effect", s("Allow")),
                                    ("Action", s("sts:AssumeRole")),
                                    (
                                        "Principal",
                                        obj(vec![("Service", s("ecs-tasks.amazonaws.com"))]),
                                    ),
                                ])]),
                            ),
                        ])],
                    ),
                ),
            ],
        ),
        block(
            "resource",
            &["aws_iam_role_policy_attachment", "execution"],
            vec![
                attr("role", raw("aws_iam_role.execution.name")),
                attr(
                    "policy_arn",
                    s("arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"),
                ),
            ],
        ),
    ];
    if !secrets.is_empty() {
        blocks.push(block(
            "resource",
            &["aws_iam_role_policy", "secrets"],
            vec![
                attr("name", tpl("${local.name}-read-secrets")),
                attr("role", raw("aws_iam_role.execution.id")),
                attr(
                    "policy",
                    call(
                        "jsonencode",
                        vec![obj(vec![
                            ("Version", s("2012-10-17")),
                            (
                                "Statement",
                                list(vec![obj(vec![
                                    ("Effect", s("Allow")),
                                    ("Action", list(vec![s("secretsmanager:GetSecretValue")])),
                                    ("Resource", list(vec![raw("var.secret_arn")])),
                                ])]),
                            ),
                        ])],
                    ),
                ),
            ],
        ));
    }
    blocks.extend([
        block(
            "resource",
            &["aws_security_group", "alb"],
            vec![
                attr("name", tpl("${local.name}-alb")),
                attr(
                    "description",
                    s("HTTP and HTTPS from anywhere to the load balancer"),
                ),
                attr("vpc_id", raw("var.vpc_id")),
                Item::Blank,
                sg_rule(
                    "ingress",
                    "80",
                    "80",
                    "tcp",
                    attr("cidr_blocks", list(vec![s("0.0.0.0/0")])),
                ),
                sg_rule(
                    "ingress",
                    "443",
                    "443",
                    "tcp",
                    attr("cidr_blocks", list(vec![s("0.0.0.0/0")])),
                ),
                all_egress(),
            ],
        ),
        block(
            "resource",
            &["aws_security_group", "tasks"],
            vec![
                attr("name", tpl("${local.name}-tasks")),
                attr(
                    "description",
                    s("The app's tasks: the web port from the load balancer only"),
                ),
                attr("vpc_id", raw("var.vpc_id")),
                Item::Blank,
                sg_rule(
                    "ingress",
                    &PORT.to_string(),
                    &PORT.to_string(),
                    "tcp",
                    attr(
                        "security_groups",
                        list(vec![raw("aws_security_group.alb.id")]),
                    ),
                ),
                all_egress(),
            ],
        ),
        block(
            "resource",
            &["aws_lb", "app"],
            vec![
                attr("name", raw("local.name")),
                attr("load_balancer_type", s("application")),
                attr("internal", raw("false")),
                attr(
                    "security_groups",
                    list(vec![raw("aws_security_group.alb.id")]),
                ),
                attr("subnets", raw("var.public_subnet_ids")),
            ],
        ),
        block(
            "resource",
            &["aws_lb_target_group", "web"],
            vec![
                attr("name", tpl("${local.name}-web")),
                attr("port", raw(PORT.to_string())),
                attr("protocol", s("HTTP")),
                attr("target_type", s("ip")),
                attr("vpc_id", raw("var.vpc_id")),
                attr("deregistration_delay", raw("30")),
                Item::Blank,
                nested(
                    "health_check",
                    vec![
                        attr("path", raw("var.health_check_path")),
                        attr("matcher", s("200-399")),
                        attr("interval", raw("15")),
                        attr("timeout", raw("5")),
                        attr("healthy_threshold", raw("2")),
                        attr("unhealthy_threshold", raw("3")),
                    ],
                ),
            ],
        ),
        block(
            "resource",
            &["aws_lb_listener", "https"],
            vec![
                attr("load_balancer_arn", raw("aws_lb.app.arn")),
                attr("port", raw("443")),
                attr("protocol", s("HTTPS")),
                attr("ssl_policy", s("ELBSecurityPolicy-TLS13-1-2-2021-06")),
                attr("certificate_arn", raw("var.certificate_arn")),
                Item::Blank,
                nested(
                    "default_action",
                    vec![
                        attr("type", s("forward")),
                        attr("target_group_arn", raw("aws_lb_target_group.web.arn")),
                    ],
                ),
            ],
        ),
        block(
            "resource",
            &["aws_lb_listener", "http"],
            vec![
                attr("load_balancer_arn", raw("aws_lb.app.arn")),
                attr("port", raw("80")),
                attr("protocol", s("HTTP")),
                Item::Blank,
                nested(
                    "default_action",
                    vec![
                        attr("type", s("redirect")),
                        Item::Blank,
                        nested(
                            "redirect",
                            vec![
                                attr("port", s("443")),
                                attr("protocol", s("HTTPS")),
                                attr("status_code", s("HTTP_301")),
                            ],
                        ),
                    ],
                ),
            ],
        ),
    ]);
    let web_container = Container {
        name: "web",
        command: &web.command,
        port: true,
    };
    blocks.push(task_definition(ins, &web_container));
    blocks.push(service(ins, "web", true));
    for p in ins.workers() {
        let c = Container {
            name: &p.name,
            command: &p.command,
            port: false,
        };
        blocks.push(task_definition(ins, &c));
        blocks.push(service(ins, &p.name, false));
    }
    if let Some(release) = ins.release() {
        let c = Container {
            name: "release",
            command: release,
            port: false,
        };
        blocks.push(task_definition(ins, &c));
        notes.push("run the release task once per deploy, before updating the services: aws ecs run-task --launch-type FARGATE --cluster CLUSTER --task-definition RELEASE_TASK_DEFINITION --network-configuration ...".into());
    }
    blocks.push(weighted(
        "heroku",
        cutover_core::plan::OLD_SET,
        raw("var.heroku_target"),
        "var.heroku_weight",
    ));
    blocks.push(weighted(
        "ecs",
        cutover_core::plan::NEW_SET,
        raw("aws_lb.app.dns_name"),
        "var.ecs_weight",
    ));

    let header = [
        &*format!(
            "{}: ECS Fargate behind an ALB, with Route 53 weighted records",
            ins.name
        ),
        "for the shift from Heroku. Variables are in variables.tf.",
    ];
    let main = hcl::file(&header, &blocks);
    let variables = hcl::file(&[], &variables(ins, opts, !secrets.is_empty()));
    let outputs = hcl::file(&[], &outputs(ins));
    Ok((
        vec![
            Artifact::plain("main.tf", main),
            Artifact::plain("variables.tf", variables),
            Artifact::plain("outputs.tf", outputs),
        ],
        notes,
    ))
}

fn service(ins: &Inspection, name: &str, web: bool) -> Block {
    let mut body = vec![
        attr("name", s(name)),
        attr("cluster", raw("aws_ecs_cluster.main.id")),
        attr(
            "task_definition",
            raw(format!("aws_ecs_task_definition.{name}.arn")),
        ),
        attr(
            "desired_count",
            if web {
                raw("var.web_count")
            } else {
                raw(ins.quantity(name).to_string())
            },
        ),
        attr("launch_type", s("FARGATE")),
    ];
    if web {
        body.push(attr("health_check_grace_period_seconds", raw("60")));
    }
    body.extend([
        Item::Blank,
        nested(
            "network_configuration",
            vec![
                attr("subnets", raw("var.private_subnet_ids")),
                attr(
                    "security_groups",
                    list(vec![raw("aws_security_group.tasks.id")]),
                ),
                attr("assign_public_ip", raw("false")),
            ],
        ),
    ]);
    if web {
        body.extend([
            Item::Blank,
            nested(
                "load_balancer",
                vec![
                    attr("target_group_arn", raw("aws_lb_target_group.web.arn")),
                    attr("container_name", s("web")),
                    attr("container_port", raw(PORT.to_string())),
                ],
            ),
            Item::Blank,
            attr("depends_on", list(vec![raw("aws_lb_listener.https")])),
        ]);
    }
    block("resource", &["aws_ecs_service", name], body)
}

fn variables(ins: &Inspection, opts: &Options, secrets: bool) -> Vec<Block> {
    let mut v = vec![
        var("region", "string", "AWS region.", Some(s(&opts.region))),
        var(
            "vpc_id",
            "string",
            "VPC of the load balancer and the tasks.",
            None,
        ),
        var(
            "public_subnet_ids",
            "list(string)",
            "Public subnets for the load balancer (two or more zones).",
            None,
        ),
        var(
            "private_subnet_ids",
            "list(string)",
            "Subnets for the tasks, with a route to the database and to ECR.",
            None,
        ),
        var(
            "image",
            "string",
            "The app's image (built from the generated Dockerfile or project.toml).",
            None,
        ),
        var(
            "certificate_arn",
            "string",
            "ACM certificate for the domain, for the HTTPS listener.",
            None,
        ),
        var(
            "zone_id",
            "string",
            "Route 53 hosted zone of the domain.",
            None,
        ),
        var(
            "domain",
            "string",
            "The app's hostname; a CNAME, so not the zone apex.",
            opts.domain.as_deref().map(s),
        ),
        var(
            "heroku_target",
            "string",
            "The DNS target Heroku gave for the domain (heroku domains), the old origin.",
            None,
        ),
        var(
            "heroku_weight",
            "number",
            "Share of DNS answers for Heroku (0-255) when the records are made; `cutover dns` and the canary move it after.",
            Some(raw("100")),
        ),
        var(
            "ecs_weight",
            "number",
            "Share of DNS answers for ECS (0-255) when the records are made; `cutover dns` and the canary move it after.",
            Some(raw("0")),
        ),
        var(
            "web_count",
            "number",
            "Web tasks (from app.json's formation when it says).",
            Some(raw(ins.quantity("web").to_string())),
        ),
        var(
            "health_check_path",
            "string",
            "Path the load balancer checks on each web task.",
            Some(s(&opts.health_path)),
        ),
    ];
    if secrets {
        v.push(var(
            "secret_arn",
            "string",
            "Secrets Manager secret holding the app's secrets, one JSON key per variable.",
            None,
        ));
    }
    v
}

fn outputs(ins: &Inspection) -> Vec<Block> {
    let out = |name: &str, value: &str, description: &str| {
        block(
            "output",
            &[name],
            vec![
                attr("description", s(description)),
                attr("value", raw(value)),
            ],
        )
    };
    let mut o = vec![
        out(
            "load_balancer_dns_name",
            "aws_lb.app.dns_name",
            "Where the ecs record points.",
        ),
        out(
            "cluster_name",
            "aws_ecs_cluster.main.name",
            "The ECS cluster.",
        ),
        out(
            "task_security_group_id",
            "aws_security_group.tasks.id",
            "Allow this group into the database's security group.",
        ),
    ];
    if ins.release().is_some() {
        o.push(out(
            "release_task_definition_arn",
            "aws_ecs_task_definition.release.arn",
            "Run once per deploy, before the services update (the release phase).",
        ));
    }
    o
}
