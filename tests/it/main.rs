mod apply;
mod dbus_contract;
mod hook;
mod cli;
mod sandbox;
mod support;
mod render;
