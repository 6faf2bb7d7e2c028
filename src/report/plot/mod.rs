//! Line figures and heat maps, drawn with plotters as PNG (text rendered with the embedded
//! DejaVu Sans, so no system font library is needed) and as SVG (inlined in `report.html`):
//! the data types, the renderer, its crisp bitmap text and its font. The study's figures
//! (`super::figures`) and the profile's are made of these.

mod font;
mod render;
mod text;
mod types;

pub(super) use render::save_heatmap;
pub use render::save_lines;
pub(super) use types::Heatmap;
pub use types::{Categories, Figure, LineFigure, Look, Panel, Point, Series, XAxis};
