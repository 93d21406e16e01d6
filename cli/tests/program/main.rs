//! The program's tests, linked as one binary: each module runs the `chainrule` binary
//! for one topic (commands, training, the page, the README's commands).

mod cli;
mod cnn_cli;
mod common;
mod distributed;
mod explain_cli;
mod family_cli;
mod gpt_cli;
mod kill;
mod lessons;
mod lessons_browser;
mod readme;
mod serve;
mod serve_browser;
mod train_cli;
