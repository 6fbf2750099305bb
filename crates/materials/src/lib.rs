//! octet-materials: crystal structures, structure file formats, periodic graphs and GNoME-style models.
