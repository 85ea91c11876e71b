pub mod apply;
pub mod render;
pub mod take_over;
pub mod verify;
