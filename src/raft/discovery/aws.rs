//! Cloud Map and ECS discovery through the AWS SDK (cargo feature `aws`).

use super::AwsSeed;

/// An emulator on a local address: DiscoverInstances' `data-` host prefix cannot apply there.
fn is_local_endpoint(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

/// Drops the `data-` host prefix that DiscoverInstances puts in front of the endpoint, which an
/// emulator at `http://127.0.0.1:PORT` cannot resolve (AWS's own endpoints keep it).
#[derive(Debug)]
struct NoHostPrefix;

impl aws_sdk_servicediscovery::config::Intercept for NoHostPrefix {
    fn name(&self) -> &'static str {
        "NoHostPrefix"
    }

    fn modify_before_transmit(
        &self,
        context: &mut aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _: &aws_sdk_servicediscovery::config::RuntimeComponents,
        _: &mut aws_sdk_servicediscovery::config::ConfigBag,
    ) -> Result<(), aws_sdk_servicediscovery::error::BoxError> {
        let uri = context.request().uri().replacen("://data-", "://", 1);
        context.request_mut().set_uri(uri)?;
        Ok(())
    }
}

/// The SDK configuration, loaded once per process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    static CONFIG: tokio::sync::OnceCell<aws_config::SdkConfig> =
        tokio::sync::OnceCell::const_new();
    CONFIG
        .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
        .await
        .clone()
}

/// Peer URLs of the instances or tasks behind `seed`, with the process's SDK configuration.
pub async fn candidates(seed: &AwsSeed) -> Result<Vec<String>, String> {
    candidates_with(seed, &sdk_config().await).await
}

/// Peer URLs of the instances or tasks behind `seed`, with `config`.
pub async fn candidates_with(
    seed: &AwsSeed,
    config: &aws_config::SdkConfig,
) -> Result<Vec<String>, String> {
    match seed {
        AwsSeed::CloudMap {
            namespace,
            service,
            port,
        } => cloud_map(config, namespace, service, *port).await,
        AwsSeed::Ecs {
            cluster,
            service,
            port,
        } => ecs_tasks(config, cluster, service, *port).await,
    }
}

/// Cloud Map `DiscoverInstances`: the instances' `AWS_INSTANCE_IPV4`.
async fn cloud_map(
    config: &aws_config::SdkConfig,
    namespace: &str,
    service: &str,
    port: u16,
) -> Result<Vec<String>, String> {
    let mut sd = aws_sdk_servicediscovery::config::Builder::from(config);
    if config.endpoint_url().is_some_and(is_local_endpoint) {
        sd = sd.interceptor(NoHostPrefix);
    }
    let client = aws_sdk_servicediscovery::Client::from_conf(sd.build());
    let out = client
        .discover_instances()
        .namespace_name(namespace)
        .service_name(service)
        .send()
        .await
        .map_err(|e| {
            format!(
                "DiscoverInstances: {}",
                aws_sdk_servicediscovery::error::DisplayErrorContext(e)
            )
        })?;
    Ok(out
        .instances()
        .iter()
        .filter_map(|i| i.attributes()?.get("AWS_INSTANCE_IPV4").cloned())
        .map(|ip| format!("http://{ip}:{port}"))
        .collect())
}

/// ECS `ListTasks` + `DescribeTasks`: the RUNNING tasks' private IPs (from their ENI
/// attachment, else their containers' network interfaces).
async fn ecs_tasks(
    config: &aws_config::SdkConfig,
    cluster: &str,
    service: &str,
    port: u16,
) -> Result<Vec<String>, String> {
    let client = aws_sdk_ecs::Client::new(config);
    let arns = client
        .list_tasks()
        .cluster(cluster)
        .service_name(service)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
        .send()
        .await
        .map_err(|e| format!("ListTasks: {}", aws_sdk_ecs::error::DisplayErrorContext(e)))?
        .task_arns
        .unwrap_or_default();
    if arns.is_empty() {
        return Ok(Vec::new());
    }
    let tasks = client
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(arns))
        .send()
        .await
        .map_err(|e| {
            format!(
                "DescribeTasks: {}",
                aws_sdk_ecs::error::DisplayErrorContext(e)
            )
        })?
        .tasks
        .unwrap_or_default();
    Ok(tasks
        .iter()
        .filter_map(|task| {
            let from_eni = task
                .attachments()
                .iter()
                .flat_map(|a| a.details())
                .filter(|d| d.name() == Some("privateIPv4Address"))
                .filter_map(|d| d.value());
            let from_containers = task
                .containers()
                .iter()
                .flat_map(|c| c.network_interfaces())
                .filter_map(|n| n.private_ipv4_address());
            from_eni
                .chain(from_containers)
                .next()
                .map(|ip| format!("http://{ip}:{port}"))
        })
        .collect())
}
