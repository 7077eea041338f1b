//! Shared harness for Gangway's end-to-end tests: an in-process gateway on
//! free ports, a WebSocket API client, a str0m-based WebRTC client, audio
//! analysis (Goertzel) and a minimal WebDriver client for headless Chromium.

pub mod api_client;
pub mod audio;
pub mod browser_call;
pub mod gateway;
pub mod impair;
pub mod js_package;
pub mod kamailio;
pub mod metrics_doc;
pub mod prometheus;
pub mod rtc_client;
pub mod sip_flood;
pub mod sip_peers;
pub mod sipws_page;
pub mod sipws_rig;
pub mod tcp_proxy;
pub mod webdriver;
pub mod webhook;
