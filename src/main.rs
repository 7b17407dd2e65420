//! Starts the chat server: settings from the environment (and `.env`), then serve until Ctrl-C
//! or SIGTERM.

use tokio::net::TcpListener;

/// mimalloc instead of the system allocator: the server allocates many small, short-lived
/// objects per message, and with mimalloc delivery throughput was about 18% higher (see
/// BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    dotenvy::dotenv().ok();
    tracing_subscriber::fmt().with_env_filter(chatapp::log_filter()).init();

    let config = chatapp::config::Config::from_env()?;
    let app = chatapp::build(&config).await?;
    let listener = TcpListener::bind((config.bind_address, config.port)).await?;
    tracing::info!("listening on http://{}/graphql", listener.local_addr()?);
    chatapp::serve(listener, app, chatapp::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
