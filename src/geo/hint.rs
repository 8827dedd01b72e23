//! A grid hint generator for spade: the start vertex of every walk (nearest query, locate,
//! insert) is a vertex in the query's own grid cell, so walks are a few steps long instead
//! of a descent through a triangulation hierarchy.
//!
//! Invariant: each stored handle is the current handle of a vertex whose position lies in
//! that cell (spade tells us of every insertion and of every removal with its swap), so a
//! hint is never stale; spade also tolerates an invalid hint.

use rustc_hash::FxHashMap;
use spade::handles::FixedVertexHandle;
use spade::{HasPosition, HintGenerator, Point2, Triangulation};

/// Cell edge in the projection's metres.
const CELL_M: f64 = 100.0;
/// Rings of cells searched around an empty cell before falling back to the last vertex.
const RINGS: i32 = 4;

/// Grid-bucket hints (see the module docs).
#[derive(Default, Debug)]
pub struct GridHint {
    cells: FxHashMap<(i32, i32), FixedVertexHandle>,
    vertices: usize,
    last: Option<FixedVertexHandle>,
}

fn cell(p: Point2<f64>) -> (i32, i32) {
    ((p.x / CELL_M).floor() as i32, (p.y / CELL_M).floor() as i32)
}

impl HintGenerator<f64> for GridHint {
    fn get_hint(&self, position: Point2<f64>) -> FixedVertexHandle {
        let (cx, cy) = cell(position);
        if let Some(h) = self.cells.get(&(cx, cy)) {
            return *h;
        }
        for r in 1..=RINGS {
            for dx in -r..=r {
                for dy in [-r, r] {
                    if let Some(h) = self.cells.get(&(cx + dx, cy + dy)) {
                        return *h;
                    }
                }
            }
            for dy in (-r + 1)..r {
                for dx in [-r, r] {
                    if let Some(h) = self.cells.get(&(cx + dx, cy + dy)) {
                        return *h;
                    }
                }
            }
        }
        self.last.unwrap_or(FixedVertexHandle::from_index(0))
    }

    fn notify_vertex_lookup(&self, _vertex: FixedVertexHandle) {}

    fn notify_vertex_inserted(&mut self, vertex: FixedVertexHandle, position: Point2<f64>) {
        // spade re-notifies when an insertion overwrote an existing vertex.
        if vertex.index() >= self.vertices {
            self.vertices = vertex.index() + 1;
        }
        self.cells.insert(cell(position), vertex);
        self.last = Some(vertex);
    }

    fn notify_vertex_removed(
        &mut self,
        swapped_in_point: Option<Point2<f64>>,
        vertex: FixedVertexHandle,
        position: Point2<f64>,
    ) {
        self.vertices = self.vertices.saturating_sub(1);
        let gone = cell(position);
        if self.cells.get(&gone) == Some(&vertex) {
            self.cells.remove(&gone);
        }
        // The former last vertex now lives at `vertex`.
        let moved = FixedVertexHandle::from_index(self.vertices);
        if let Some(p) = swapped_in_point {
            let c = cell(p);
            if self.cells.get(&c) == Some(&moved) {
                self.cells.insert(c, vertex);
            }
        }
        if self.last == Some(moved) {
            self.last = Some(vertex);
        } else if self.last == Some(vertex) && swapped_in_point.is_none() {
            self.last = None;
        }
        if self.last.is_some_and(|l| l.index() >= self.vertices) {
            self.last = self.cells.values().next().copied();
        }
    }

    fn initialize_from_triangulation<TR, V>(triangulation: &TR) -> Self
    where
        TR: Triangulation<Vertex = V>,
        V: HasPosition<Scalar = f64>,
    {
        let mut g = Self::default();
        for v in triangulation.vertices() {
            g.notify_vertex_inserted(v.fix(), v.position());
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spade::DelaunayTriangulation;

    type Tri = DelaunayTriangulation<Point2<f64>, (), (), (), GridHint>;

    proptest! {
        /// After any inserts and removals, every hint is a live vertex inside its cell.
        #[test]
        fn hints_stay_valid(
            pts in prop::collection::vec((-5_000.0f64..5_000.0, -5_000.0f64..5_000.0), 1..300),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut tri = Tri::new();
            for (x, y) in pts {
                tri.insert(Point2::new(x, y)).unwrap();
            }
            for r in removals {
                if tri.num_vertices() == 0 { break; }
                let v = FixedVertexHandle::from_index(r.index(tri.num_vertices()));
                tri.remove(v);
            }
            let g = tri.hint_generator();
            for (c, h) in &g.cells {
                prop_assert!(h.index() < tri.num_vertices());
                prop_assert_eq!(cell(tri.vertex(*h).position()), *c);
            }
            if let Some(l) = g.last {
                prop_assert!(l.index() < tri.num_vertices());
            }
        }
    }
}
