mod apply;
mod cli;
mod dbus_contract;
mod hook;
mod render;
mod sandbox;
mod scale;
mod support;
