"""
Writes facts.jsonl, the fact probe of `eval.py --suite general`: short multiple-choice cloze items (a context and
four continuations, the first one correct in this list; `answer` gives its index after a fixed shuffle).
See README.md in this folder for how the items were written. Run it again only to change the items:

    python data/facts/make_facts.py
"""

import json
import os
import random

ITEMS = [  # (category, context, correct, wrong, wrong, wrong)
    # capitals
    ("capital", "The capital of France is", "Paris", "Lyon", "Marseille", "Nice"),
    ("capital", "The capital of Germany is", "Berlin", "Munich", "Hamburg", "Frankfurt"),
    ("capital", "The capital of Italy is", "Rome", "Milan", "Naples", "Venice"),
    ("capital", "The capital of Spain is", "Madrid", "Barcelona", "Seville", "Valencia"),
    ("capital", "The capital of Japan is", "Tokyo", "Osaka", "Kyoto", "Nagoya"),
    ("capital", "The capital of China is", "Beijing", "Shanghai", "Guangzhou", "Shenzhen"),
    ("capital", "The capital of Russia is", "Moscow", "Saint Petersburg", "Kazan", "Novosibirsk"),
    ("capital", "The capital of Canada is", "Ottawa", "Toronto", "Vancouver", "Montreal"),
    ("capital", "The capital of Australia is", "Canberra", "Sydney", "Melbourne", "Perth"),
    ("capital", "The capital of Egypt is", "Cairo", "Alexandria", "Luxor", "Giza"),
    ("capital", "The capital of Brazil is", "Brasília", "Rio de Janeiro", "São Paulo", "Salvador"),
    ("capital", "The capital of India is", "New Delhi", "Mumbai", "Kolkata", "Chennai"),
    ("capital", "The capital of the United Kingdom is", "London", "Manchester", "Edinburgh", "Liverpool"),
    ("capital", "The capital of Greece is", "Athens", "Sparta", "Thessaloniki", "Corinth"),
    ("capital", "The capital of Portugal is", "Lisbon", "Porto", "Faro", "Braga"),
    ("capital", "The capital of Ireland is", "Dublin", "Cork", "Galway", "Limerick"),
    ("capital", "The capital of Norway is", "Oslo", "Bergen", "Stavanger", "Trondheim"),
    ("capital", "The capital of Sweden is", "Stockholm", "Gothenburg", "Malmö", "Uppsala"),
    ("capital", "The capital of Poland is", "Warsaw", "Krakow", "Gdansk", "Wroclaw"),
    ("capital", "The capital of Turkey is", "Ankara", "Istanbul", "Izmir", "Antalya"),
    ("capital", "The capital of Mexico is", "Mexico City", "Guadalajara", "Cancun", "Monterrey"),
    ("capital", "The capital of Argentina is", "Buenos Aires", "Córdoba", "Rosario", "Mendoza"),
    ("capital", "The capital of Kenya is", "Nairobi", "Mombasa", "Kisumu", "Nakuru"),
    ("capital", "The capital of South Korea is", "Seoul", "Busan", "Incheon", "Daegu"),
    ("capital", "The capital of Austria is", "Vienna", "Salzburg", "Graz", "Innsbruck"),
    ("capital", "The capital of the Netherlands is", "Amsterdam", "Rotterdam", "Utrecht", "Eindhoven"),
    # astronomy
    ("astronomy", "The largest planet in the solar system is", "Jupiter", "Saturn", "Neptune", "Earth"),
    ("astronomy", "The planet closest to the Sun is", "Mercury", "Venus", "Mars", "Earth"),
    ("astronomy", "The planet known as the Red Planet is", "Mars", "Venus", "Jupiter", "Mercury"),
    ("astronomy", "The planet famous for its bright rings is", "Saturn", "Mars", "Mercury", "Venus"),
    ("astronomy", "The natural satellite of the Earth is the", "Moon", "Sun", "comet", "asteroid"),
    ("astronomy", "The star at the centre of our solar system is the", "Sun", "Moon", "Polaris", "Sirius"),
    ("astronomy", "The galaxy that contains our solar system is the", "Milky Way", "Andromeda", "Triangulum",
     "Sombrero"),
    ("astronomy", "The first person to walk on the Moon was Neil", "Armstrong", "Young", "Diamond", "Gaiman"),
    ("astronomy", "The Earth takes one year to travel once around the", "Sun", "Moon", "equator", "galaxy"),
    ("astronomy", "The number of planets in our solar system is", "eight", "five", "twelve", "twenty"),
    # chemistry
    ("chemistry", "The chemical symbol for gold is", "Au", "Ag", "Gd", "Go"),
    ("chemistry", "The chemical symbol for iron is", "Fe", "Ir", "In", "Fi"),
    ("chemistry", "The chemical symbol for sodium is", "Na", "So", "Sd", "Sn"),
    ("chemistry", "The chemical symbol for silver is", "Ag", "Au", "Si", "Sv"),
    ("chemistry", "Water is made of hydrogen and", "oxygen", "nitrogen", "carbon", "helium"),
    ("chemistry", "The lightest chemical element is", "hydrogen", "helium", "lithium", "oxygen"),
    ("chemistry", "The gas that plants take from the air for photosynthesis is carbon", "dioxide", "monoxide",
     "fibre", "paper"),
    ("chemistry", "The most abundant gas in the Earth's atmosphere is", "nitrogen", "oxygen", "argon", "hydrogen"),
    ("chemistry", "Table salt is sodium", "chloride", "carbonate", "sulfate", "nitrate"),
    ("chemistry", "The noble gas that glows red in advertising signs is", "neon", "iron", "copper", "sulfur"),
    ("chemistry", "The metal that is liquid at room temperature is", "mercury", "iron", "aluminium", "tin"),
    ("chemistry", "Diamonds are made of pure", "carbon", "silicon", "glass", "iron"),
    # authors
    ("author", "The play Hamlet was written by William", "Shakespeare", "Wordsworth", "Blake", "Golding"),
    ("author", "The novel Pride and Prejudice was written by Jane", "Austen", "Eyre", "Goodall", "Fonda"),
    ("author", "The novel War and Peace was written by Leo", "Tolstoy", "Chekhov", "Gogol", "Pushkin"),
    ("author", "The poem Paradise Lost was written by John", "Milton", "Keats", "Donne", "Dryden"),
    ("author", "The novel Oliver Twist was written by Charles", "Dickens", "Darwin", "Lamb", "Kingsley"),
    ("author", "The Origin of Species was written by Charles", "Darwin", "Dickens", "Babbage", "Lyell"),
    ("author", "The novel Don Quixote was written by Miguel de", "Cervantes", "Unamuno", "Falla", "Goya"),
    ("author", "The Divine Comedy was written by Dante", "Alighieri", "Rossetti", "Petrarca", "Gabriel"),
    ("author", "The novel Nineteen Eighty-Four was written by George", "Orwell", "Eliot", "Washington", "Lucas"),
    ("author", "The Odyssey is an epic poem attributed to", "Homer", "Virgil", "Ovid", "Plato"),
    ("author", "The novel Moby-Dick was written by Herman", "Melville", "Hesse", "Wouk", "Munster"),
    ("author", "The Adventures of Tom Sawyer was written by Mark", "Twain", "Antony", "Rothko", "Spitz"),
    ("author", "The theory of general relativity was developed by Albert", "Einstein", "Schweitzer", "Camus",
     "Hofmann"),
    ("author", "The laws of motion and universal gravitation were set out by Isaac", "Newton", "Asimov", "Hayes",
     "Watts"),
    ("author", "The Mona Lisa was painted by Leonardo da", "Vinci", "Costa", "Silva", "Ponte"),
    # dates and history
    ("history", "The Second World War ended in the year", "1945", "1918", "1960", "1871"),
    ("history", "The First World War began in the year", "1914", "1939", "1870", "1805"),
    ("history", "Christopher Columbus first crossed the Atlantic in the year", "1492", "1066", "1776", "1815"),
    ("history", "The Declaration of Independence of the United States was signed in", "1776", "1492", "1848",
     "1901"),
    ("history", "William Shakespeare was born in the year", "1564", "1066", "1812", "1900"),
    ("history", "The Battle of Hastings was fought in the year", "1066", "1666", "1215", "1415"),
    ("history", "The Berlin Wall fell in the year", "1989", "1961", "1945", "2001"),
    ("history", "The first President of the United States was George", "Washington", "Lincoln", "Jefferson",
     "Bush"),
    ("history", "The ancient wonder built for the pharaohs at Giza is the Great", "Pyramid", "Wall", "Library",
     "Lighthouse"),
    ("history", "The French Revolution began in the year", "1789", "1689", "1889", "1589"),
    # units and numbers
    ("units", "There are sixty seconds in a", "minute", "day", "year", "week"),
    ("units", "There are seven days in a", "week", "month", "year", "minute"),
    ("units", "A kilometre is one thousand", "metres", "grams", "litres", "seconds"),
    ("units", "A kilogram is one thousand", "grams", "metres", "litres", "seconds"),
    ("units", "Water freezes at a temperature of zero degrees", "Celsius", "Fahrenheit", "north", "latitude"),
    ("units", "At sea level, water boils at one hundred degrees", "Celsius", "Fahrenheit", "Kelvin", "north"),
    ("units", "A year has twelve", "months", "weeks", "days", "hours"),
    ("units", "A day has twenty-four", "hours", "minutes", "seconds", "weeks"),
    ("units", "Electric current is measured in", "amperes", "kilograms", "litres", "metres"),
    ("units", "The number of sides of a triangle is", "three", "four", "five", "six"),
    ("units", "The number of sides of a hexagon is", "six", "five", "seven", "eight"),
    ("units", "Two plus two equals", "four", "five", "three", "six"),
    ("units", "Ten times ten equals one", "hundred", "thousand", "dozen", "million"),
    # animals and biology
    ("animals", "The largest animal that has ever lived is the blue", "whale", "shark", "elephant", "bird"),
    ("animals", "A baby cat is called a", "kitten", "puppy", "calf", "foal"),
    ("animals", "A baby dog is called a", "puppy", "kitten", "lamb", "cub"),
    ("animals", "A young sheep is called a", "lamb", "calf", "kid", "foal"),
    ("animals", "The animal known as the king of the jungle is the", "lion", "mouse", "rabbit", "penguin"),
    ("animals", "Bees make", "honey", "milk", "silk", "wool"),
    ("animals", "A spider has eight", "legs", "wings", "eyes", "tails"),
    ("animals", "An insect has six", "legs", "wings", "eyes", "heads"),
    ("animals", "The tallest animal in the world is the", "giraffe", "elephant", "horse", "camel"),
    ("animals", "Penguins live mostly in the southern hemisphere, especially in", "Antarctica", "Greenland",
     "Siberia", "Iceland"),
    ("animals", "Fish breathe with their", "gills", "lungs", "wings", "tails"),
    ("animals", "The organ that pumps blood around the body is the", "heart", "liver", "lung", "stomach"),
    ("animals", "Humans breathe air into their", "lungs", "stomachs", "hearts", "bones"),
    ("animals", "A caterpillar turns into a", "butterfly", "spider", "beetle", "worm"),
    # geography
    ("geography", "The longest river in Africa is the", "Nile", "Amazon", "Thames", "Danube"),
    ("geography", "The highest mountain in the world is Mount", "Everest", "Kilimanjaro", "Fuji", "Olympus"),
    ("geography", "The largest ocean on Earth is the", "Pacific", "Atlantic", "Indian", "Arctic"),
    ("geography", "The largest hot desert in the world is the", "Sahara", "Gobi", "Atacama", "Kalahari"),
    ("geography", "The Amazon rainforest lies mostly in", "Brazil", "Egypt", "Canada", "Norway"),
    ("geography", "The river that flows through London is the", "Thames", "Seine", "Danube", "Rhine"),
    ("geography", "The river that flows through Paris is the", "Seine", "Thames", "Tiber", "Volga"),
    ("geography", "Mount Kilimanjaro is in", "Tanzania", "Peru", "Nepal", "Italy"),
    ("geography", "The Great Barrier Reef lies off the coast of", "Australia", "Brazil", "Norway", "Japan"),
    ("geography", "The continent with the most people is", "Asia", "Europe", "Australia", "Antarctica"),
    ("geography", "Venice is famous for its", "canals", "deserts", "glaciers", "volcanoes"),
    # language and everyday knowledge
    ("everyday", "The opposite of hot is", "cold", "tall", "happy", "loud"),
    ("everyday", "The colour of a clear daytime sky is", "blue", "green", "red", "purple"),
    ("everyday", "Grass is usually the colour", "green", "blue", "purple", "orange"),
    ("everyday", "The season after winter is", "spring", "autumn", "summer", "midnight"),
    ("everyday", "Bread is baked in an", "oven", "ocean", "orchard", "umbrella"),
    ("everyday", "People read books in a", "library", "swimming pool", "volcano", "stable"),
]


def main():
    rng = random.Random(0)  # a fixed shuffle: the correct choice is not always first
    out = []
    for category, context, *choices in ITEMS:
        assert len(choices) == 4 and len(set(choices)) == 4, context
        order = list(range(4))
        rng.shuffle(order)
        out.append(dict(category=category, context=context, choices=[" " + choices[i] for i in order],
                        answer=order.index(0)))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "facts.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for item in out:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{path}: {len(out)} items")


if __name__ == "__main__":
    main()
