//! The whole server over real HTTP and WebSockets on port 0.

mod helpers;

mod admin;
mod bad_input;
mod browser;
mod citizen;
mod cluster;
mod connections;
mod dashboard;
mod edge;
mod events;
mod frames;
mod http_api;
mod live;
mod officer;
mod oidc;
mod outage;
mod process;
mod profile;
mod rewards;
mod social;
mod supervision;
mod tls;
mod tokens;
mod webhooks;
